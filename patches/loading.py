"""Wraps `vllm.lora.worker_manager.WorkerLoRAManager._load_adapter` (which calls
`LoRAModel.from_local_checkpoint` for adapter_model.safetensors): a served-form folder is one
adapter to vLLM — hylorada.json and hylorada_dynamic.safetensors are read with it.

Order: `hylorada.format.layout.load_served(dir, base_config=<the engine's HF config>, max_rank=max_lora_rank)`
validates names, shapes, shape hash and rank against the base, plus `check_servable` (parts these
patches cannot apply, a RoPE setting this engine cannot serve) — all BEFORE vLLM loads anything or touches a slot. Then
vLLM's own loader runs and the validated adapter (side-file tensors only) is attached to the
LoRAModel as `.hylorada` for engine.py (written into its slot on activation); its RoPE table (rope.RopeTables) is
built at that point too, so activation never fails. A plain PEFT folder loads as kind "lora" (c = 1, p = 1).
"""
from __future__ import annotations

import dataclasses

from .wrap import wrap


def check_servable(served, hf_config) -> None:
    """Refuse (AdapterError) what the patches would otherwise silently drop or apply wrongly.

    DAA and the sink / s2 attention modes are served by attention.py where it installs (the CPU
    platform); there they are validated (attention.check_attention), elsewhere refused.
    """
    from hylorada.format.layout import META, AdapterError
    from . import attention
    from .rope import check_rope
    mode = served.meta.attention.mode
    if attention.variants_supported():
        attention.check_attention(served, hf_config)
    elif served.meta.daa is not None:
        raise AdapterError(served.path / META, "PositionalDAA is applied only by the CPU attention patch on this "
                           "vLLM; this adapter would be served wrongly here", "daa")
    elif mode != "full":
        raise AdapterError(served.path / META, f"attention mode {mode!r} is served only by the CPU attention patch "
                           "on this vLLM (full attention here)", "attention")
    check_rope(served, hf_config)


def stamped(path: str, hf_config, max_rank: int | None, key: bytes) -> bool:
    """A checked stamp on `path` verifies under `key` (env.Settings.checked_key; b"": never) against this engine's
    base and rank: hylorada-serve's publish check passed these exact files (hylorada.format.stamp)."""
    from hylorada.format import stamp
    return bool(key) and stamp.stamp_ok(path, key, stamp.context(hf_config, max_rank))


def load_hylorada(path: str, hf_config, max_rank: int | None, values_checked: bool = False):
    """Validated ServedAdapter for `path` with its LoRA tensors dropped (vLLM holds those). values_checked (a
    verified stamp): the LoRA values are not read or checked again (load_served's values_checked); every structural
    check runs."""
    from hylorada.format.load import load_served
    served = load_served(path, base_config=hf_config, max_rank=max_rank, values_checked=values_checked)
    check_servable(served, hf_config)
    return dataclasses.replace(served, lora={})


def load_adapter(orig, self, lora_request):
    """Validate (load_hylorada) before vLLM's own loader runs, then attach the side file to its LoRAModel."""
    from vllm.lora.utils import get_adapter_absolute_path
    from .env import Settings
    from .residency import count_load
    path = get_adapter_absolute_path(lora_request.lora_path)
    hf_config, max_rank = self._adapter_manager.model.config, self.lora_config.max_lora_rank
    checked = stamped(path, hf_config, max_rank, Settings.read().checked_key)
    served = load_hylorada(path, hf_config, max_rank, values_checked=checked)
    state = getattr(self._adapter_manager, "hylorada", None)
    if state is not None:
        state.rope.register(served)                    # a new setting's table now, or AdapterError before any load
        state.norms.check(served)
        state.embeds.check(served)
    lora = orig(self, lora_request)
    count_load(lora_request.lora_int_id, checked)
    lora.hylorada = served
    return lora


def install() -> None:
    from vllm.lora.worker_manager import WorkerLoRAManager
    wrap(WorkerLoRAManager, "_load_adapter")(load_adapter)
