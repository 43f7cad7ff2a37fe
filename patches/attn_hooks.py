"""Feeds attn_state (per-slot attention variants, per-step plan) from vLLM. Touch points:

  - `vllm.lora.model_manager.LoRAModelManager.__init__`: one AttnState per manager (server-wide default
    from HYLORADA_ATTENTION), attached as `.hylorada_attn` to the manager and to every decoder
    `Attention` layer of its model (attn_backend reads it there); a forward hook on the model clears the
    step plan after each forward (nothing outlives it).
  - `LoRAModelManager.activate_adapter`: when vLLM puts an adapter in a slot, its attention mode and DAA
    tensors (the ServedAdapter loading.py attached as `lora_model.hylorada`) go into the same slot row.
  - `vllm.v1.worker.lora_model_runner_mixin.LoRAModelRunnerMixin.set_active_loras` (called by the model
    runner once per step, just before the forward, with the InputBatch whose request order is the
    attention metadata's): each request's LoRA id -> slot, and its prompt length (S² groups).
  - `check_attention` is what `patches.loading.check_servable` calls where these variants are served.
"""
from __future__ import annotations

from .attn_state import AttnState, ModeSpec, daa_layers, server_default

_ORIG: dict = {}


def attach(manager) -> AttnState:
    from vllm.model_executor.layers.attention import Attention
    from vllm.v1.attention.backend import AttentionType
    state = AttnState(manager.lora_slots, server_default())
    manager.hylorada_attn = state
    for module in manager.model.modules():
        if isinstance(module, Attention) and getattr(module, "attn_type", AttentionType.DECODER) == AttentionType.DECODER:
            module.hylorada_attn = state
    manager.model.register_forward_hook(lambda *_: state.end_step())
    return state


def check_attention(served, hf_config) -> None:
    """AdapterError unless the attention mode is known and well formed and DAA fits the engine's heads."""
    from hylorada.format.layout import META, AdapterError
    try:
        ModeSpec.from_meta(served.meta.attention.to_json())
    except ValueError as e:
        raise AdapterError(served.path / META, str(e), "attention") from None
    heads = getattr(hf_config, "num_attention_heads", None)
    for i, (hs, bb, _) in daa_layers(served).items():
        if heads is not None and (hs.shape != (heads,) or bb.shape[0] != heads):
            raise AdapterError(served.path / "hylorada_dynamic.safetensors",
                               f"DAA of layer {i} has {hs.shape[0]} heads, the engine's model {heads}", f"layers.{i}.daa")


def install() -> None:
    from vllm.lora.model_manager import LoRAModelManager
    from vllm.v1.worker.lora_model_runner_mixin import LoRAModelRunnerMixin

    if _ORIG:
        return
    _ORIG["init"], _ORIG["activate"] = LoRAModelManager.__init__, LoRAModelManager.activate_adapter
    _ORIG["set_active"] = LoRAModelRunnerMixin.set_active_loras

    def __init__(self, *args, **kwargs):
        _ORIG["init"](self, *args, **kwargs)
        attach(self)

    def activate_adapter(self, lora_id: int) -> bool:
        result = _ORIG["activate"](self, lora_id)
        state = getattr(self, "hylorada_attn", None)
        if result and state is not None:
            lora_model = self._registered_adapters.get(lora_id)
            state.set_slot(self.lora_index_to_id.index(lora_id), getattr(lora_model, "hylorada", None))
        return result

    def set_active_loras(self, input_batch, num_scheduled_tokens, *args, **kwargs):
        result = _ORIG["set_active"](self, input_batch, num_scheduled_tokens, *args, **kwargs)
        manager = getattr(getattr(self, "lora_manager", None), "_adapter_manager", None)
        state = getattr(manager, "hylorada_attn", None)
        if state is not None:
            n = input_batch.num_reqs
            state.begin_step(input_batch.request_lora_mapping[:n], input_batch.num_prompt_tokens[:n],
                             manager.lora_index_to_id)
        return result

    LoRAModelManager.__init__ = __init__
    LoRAModelManager.activate_adapter = activate_adapter
    LoRAModelRunnerMixin.set_active_loras = set_active_loras
