"""How a HyLoRADA layer adds its LoRA delta: one implementation per path, picked once per engine.

vLLM's punica wrappers are the model (one PunicaWrapper class per platform, chosen once when the LoRA manager is
built, called by every layer without a branch). Here the engine's HyState holds one `LoRAPath`, and every
HyLoRADA layer call is `state.path.add_lora_(layer, out, x, state)`:

    GroupedPath  "grouped"  grouped_cpu.grouped_lora_: tokens grouped by slot once per step, one matmul pair per
                            big group, one batched pair per slice for the small ones (the CPU default)
    PunicaPath   "vllm"     vLLM's punica ops through the layer's punica_wrapper, the rank-r buffer scaled by p
                            (0 for base tokens: masks vLLM 0.32's -1 -> last-slot wrap); the default elsewhere

Both compute, for every adapter token t of slot s and every slice i of the layer (base tokens get nothing):

    out[t, slice i] += p_i(pos_t) * (x[t] @ A_i[s].T) @ B_i[s].T

The engine starts on `default_path` (HYLORADA_LORA_PATH, env.py); the `hylorada_lora_path` worker RPC
(control.py) re-picks it on a running engine through `HyState.use_path`.
"""
from __future__ import annotations

from typing import Protocol

from torch import Tensor

from . import grouped_cpu
from .env import LORA_PATH, Settings

PATHS = ("grouped", "vllm")


class LoRAPath(Protocol):
    name: str

    def add_lora_(self, layer, out: Tensor, x: Tensor, state) -> None:
        """out [T, sum(layer.output_slices)] += the step's LoRA delta of x [T, d_in] (in place)."""


class GroupedPath:
    name = "grouped"

    def add_lora_(self, layer, out: Tensor, x: Tensor, state) -> None:
        grouped_cpu.grouped_lora_(out, x, layer.lora_a_stacked, layer.lora_b_stacked, layer.output_slices,
                                  layer.hy_rows, state, layer.hy_bt)


class PunicaPath:
    name = "vllm"

    def add_lora_(self, layer, out: Tensor, x: Tensor, state) -> None:
        grouped_cpu.vllm_lora_(layer.punica_wrapper, out, x, layer.lora_a_stacked, layer.lora_b_stacked,
                               layer.output_slices, [state.P[m] for m in layer.hy_rows])


_IMPLEMENTATIONS: dict[str, LoRAPath] = {"grouped": GroupedPath(), "vllm": PunicaPath()}


def pick(name: str) -> LoRAPath:
    """The implementation of path `name` (ValueError naming the choices otherwise)."""
    if name not in _IMPLEMENTATIONS:
        raise ValueError(f"path must be one of {PATHS} (got {name!r})")
    return _IMPLEMENTATIONS[name]


def default_path(is_cpu: bool = True, settings: Settings | None = None) -> str:
    """The path an engine starts on: HYLORADA_LORA_PATH, else grouped on the CPU and vLLM's own (its Triton
    punica kernels) elsewhere — the grouped path is verified on the CPU only."""
    path = (settings or Settings.read()).lora_path
    path = ("grouped" if is_cpu else "vllm") if path is None else path
    if path not in PATHS:
        raise ValueError(f"{LORA_PATH} must be one of {PATHS} (got {path!r})")
    return path
