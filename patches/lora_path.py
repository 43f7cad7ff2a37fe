"""How a HyLoRADA layer adds its LoRA delta: one implementation per path, picked once per engine.

vLLM's punica wrappers are the model (one PunicaWrapper class per platform, chosen once when the LoRA manager is
built, called by every layer without a branch). Here the engine's HyState holds one `LoRAPath`: its `begin_step`
runs once per step (HyState.begin_step), and every HyLoRADA layer calls `state.path.add_lora_(layer, out, x, state)`
then `state.path.scale_c_(layer, out, state)` (row-parallel layers: after the all-reduce):

    GroupedPath  "grouped"  grouped_cpu.grouped_lora_: tokens grouped by slot once per step, one matmul pair per
                            big group, one batched pair per slice for the small ones (the CPU default); reads each
                            slot's weights where they live (the layer's views), so a slot costs no copy
    PunicaPath   "vllm"     vLLM's punica ops through the layer's punica_wrapper, the rank-r buffer scaled by p
                            (0 for base tokens: masks vLLM 0.32's -1 -> last-slot wrap); the default elsewhere
    StaticPath   "static"   static_path.py: per-step inputs in fixed-capacity tables written in place, no Python
                            decision on step data — the form vLLM's torch.compile / CUDA graphs can hold
                            (docs/gpu.md); on the CPU engine it runs eagerly so CI serves through the same code

Both compute, for every adapter token t of slot s and every slice i of the layer (base tokens get nothing):

    out[t, slice i] += p_i(pos_t) * (x[t] @ A_i[s].T) @ B_i[s].T

The engine starts on `default_path` (HYLORADA_LORA_PATH, env.py); the `hylorada_lora_path` worker RPC
(control.py) re-picks it on a running engine through `HyState.use_path`.
"""
from __future__ import annotations

from typing import Protocol

from torch import Tensor

from . import grouped_cpu, static_path
from .env import LORA_PATH, Settings

PATHS = ("grouped", "vllm", "static")
COPY_PATHS = ("vllm", "static")          # they read vLLM's [S, 1, R, d] slot stacks (layers.py keeps them for these)


def needs_copies(path: str) -> bool:
    """Whether the layers must hold vLLM's per-slot weight copies for LoRA path `path` (the grouped path reads
    the cached tensors themselves)."""
    return path in COPY_PATHS


class LoRAPath(Protocol):
    name: str

    def begin_step(self, tables, positions: Tensor, token_slots: Tensor):
        """Once per step before the forward (positions [T], token_slots [T], -1 = base): what the path keeps as
        HyState.step (None when it needs nothing beyond HyState's own plan)."""

    def add_lora_(self, layer, out: Tensor, x: Tensor, state) -> None:
        """out [T, sum(layer.output_slices)] += the step's LoRA delta of x [T, d_in] (in place)."""

    def scale_c_(self, layer, out: Tensor, state) -> None:
        """out [T, sum(layer.output_slices)] *= c of each token's slot (in place; base tokens: 1)."""


class _PlannedPath:
    """The paths driven by HyState's per-step plan (groups, P): Python decides on the step's slots (eager only)."""

    def begin_step(self, tables, positions: Tensor, token_slots: Tensor):
        return None

    def scale_c_(self, layer, out: Tensor, state) -> None:
        if state.groups and not layer.hy_c_slots.isdisjoint(state.present):
            grouped_cpu.scale_tokens_(out, layer.hy_c, state, layer.hy_c_slots)


class GroupedPath(_PlannedPath):
    name = "grouped"

    def add_lora_(self, layer, out: Tensor, x: Tensor, state) -> None:
        if state.groups:
            grouped_cpu.grouped_lora_(out, x, layer.hy_views, layer.output_slices, layer.hy_rows, state,
                                      layer.hy_stacks)


class PunicaPath(_PlannedPath):
    name = "vllm"

    def add_lora_(self, layer, out: Tensor, x: Tensor, state) -> None:
        if state.groups:
            grouped_cpu.vllm_lora_(layer.punica_wrapper, out, x, layer.lora_a_stacked, layer.lora_b_stacked,
                                   layer.output_slices, [state.P[m] for m in layer.hy_rows])


class StaticPath:
    """No branch on step data: the mapping goes into the persistent tables, every layer runs the same ops."""
    name = "static"

    def begin_step(self, tables, positions: Tensor, token_slots: Tensor):
        tables.set_mapping(token_slots, positions)
        return static_path.step_inputs(tables)

    def add_lora_(self, layer, out: Tensor, x: Tensor, state) -> None:
        out.add_(static_path.lora_delta(x, layer.lora_a_stacked, layer.lora_b_stacked, layer.hy_rows, state.tables,
                                        state.step).to(out.dtype))

    def scale_c_(self, layer, out: Tensor, state) -> None:
        out.copy_(static_path.scale_c(out, layer.hy_c, state.tables))


_IMPLEMENTATIONS: dict[str, LoRAPath] = {"grouped": GroupedPath(), "vllm": PunicaPath(), "static": StaticPath()}


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
