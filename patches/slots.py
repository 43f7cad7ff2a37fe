"""Wraps `vllm.lora.model_manager.LoRAModelManager.activate_adapter`: when vLLM moves an adapter into
a slot (and has called every layer's set_lora / reset_lora for it), write the HyLoRADA parts of that
adapter into the same slot — slot-level (position bias, bucket config, rank, landmarks) in HyState,
per layer (c, w_pos) in each HyLoRADA layer. A plain LoRA writes the identity (c = 1, p = 1).

Eviction needs nothing extra: a freed slot is never referenced by a token, and the next activation
rewrites every table for the slot (vLLM resets every layer in activate_adapter).
"""
from __future__ import annotations

_ORIG = None


def write_slot(manager, lora_id: int) -> None:
    state = getattr(manager, "hylorada", None)
    if state is None:
        return
    from .layers import HyLoRADALinearMixin
    index = manager.lora_index_to_id.index(lora_id)
    lora_model = manager._registered_adapters.get(lora_id)
    served = getattr(lora_model, "hylorada", None)
    rank = served.rank if served is not None else getattr(lora_model, "rank", 0)
    state.set_slot(index, served, rank)
    for module in manager.modules.values():
        if isinstance(module, HyLoRADALinearMixin):
            module.hy_set(index, served, state)


def install() -> None:
    global _ORIG
    from vllm.lora.model_manager import LoRAModelManager
    if _ORIG is not None:
        return
    _ORIG = LoRAModelManager.activate_adapter

    def activate_adapter(self, lora_id: int) -> bool:
        result = _ORIG(self, lora_id)
        if result:
            write_slot(self, lora_id)
        return result

    activate_adapter.__doc__ = _ORIG.__doc__
    LoRAModelManager.activate_adapter = activate_adapter
