"""vLLM's LoRA manager and model runner, wrapped once each, feeding one per-engine state (state.EngineState):

  - `vllm.lora.model_manager.LoRAModelManager.__init__`: builds the engine's EngineState — the LoRA half
    (HyState, on the engine's LoRA path, lora_path.default_path) on every punica wrapper, where the HyLoRADA
    layers read it; the attention half (AttnState, default mode HYLORADA_ATTENTION) on every decoder `Attention`
    layer, where attn_backend reads it, on platforms that serve the variants (attention.variants_supported) —
    registers every HyLoRADA layer's w_pos rows, and hooks the model once for both halves:
      a forward pre-hook reads `positions` — the very tensor the model runner passes to the model
      (`self.model(input_ids=..., positions=self.positions[:n])`, i.e. what RoPE uses) — and the punica
      wrapper's `token_lora_indices` (set by set_active_loras earlier in the same step), and begins the step
      (groups and p(pos) for every layer, the variant requests). This covers prefill, chunked prefill, decode
      and mixed steps alike: the runner flattens them all into one token list;
      a forward hook ends the step (nothing outlives the forward); landmark hooks on the MLP blocks (landmarks.py);
    the RoPE tables (rope.RopeTables) on the model's rotary embeddings, each token's rotary positions
    offset into its adapter's table once per step; the trained-norm tables (norms.NormTables) on its RMSNorms;
    and the trained embedding rows (embeddings.EmbedTables) on its input embedding.
  - `LoRAModelManager.activate_adapter`: when vLLM moves an adapter into a slot (and has called every layer's
    set_lora / reset_lora for it), the adapter's HyLoRADA parts (the ServedAdapter loading.py attached as
    `lora_model.hylorada`) go into the same slot — slot-level (position bias, bucket config, rank, landmarks,
    attention mode, DAA) in the EngineState, per layer (c, w_pos) in each HyLoRADA layer. A plain LoRA writes
    the identity (c = 1, p = 1, the default attention). Eviction needs nothing: a freed slot is never
    referenced, and the next activation rewrites every table of the slot.
  - `vllm.v1.worker.lora_model_runner_mixin.LoRAModelRunnerMixin.set_active_loras` (called by the model runner
    once per step just before the forward, with the InputBatch whose request order is the attention
    metadata's): each request's LoRA id and prompt length (S² groups), for the attention half.
The CPU platform runs LoRA engines eagerly (CompilationMode.NONE), so the hooks fire every step.
"""
from __future__ import annotations

from .wrap import wrap


def build_state(manager):
    """The EngineState of a just-built LoRAModelManager, attached where the layers read it, and the model hooks."""
    from vllm.platforms import current_platform

    from . import landmarks
    from .attention import variants_supported
    from .attn_state import AttnState, server_default
    from .layers import HyLoRADALinearMixin
    from .lora_path import default_path
    from .embeddings import EmbedTables
    from .norms import NormTables
    from .rope import RopeTables
    from .state import EngineState, HyState
    if manager.lora_config.fully_sharded_loras:
        raise RuntimeError("hylorada_patches: fully_sharded_loras is not supported by the HyLoRADA layers; "
                           "run without --fully-sharded-loras")
    lora = HyState(manager.lora_slots, path=default_path(current_platform.is_cpu()), device=manager.device,
                   max_tokens=manager.max_num_batched_tokens)
    attn = AttnState(manager.lora_slots, server_default()) if variants_supported() else None
    rope = RopeTables.attach(manager.model, manager.lora_slots, manager.model.config)
    norms = NormTables.attach(manager.model, manager.lora_slots)
    wrappers = list(manager.punica_wrapper_mapping.values())
    main = wrappers[0]
    embeds = EmbedTables.attach(manager.model, manager.lora_slots,
                                lambda: None if main.indices_len[0] is None else main.token_lora_indices)
    state = manager.hylorada = EngineState(lora, attn, rope, norms, embeds)
    for pw in wrappers:
        pw.hylorada = lora
    for name, module in manager.modules.items():
        if isinstance(module, HyLoRADALinearMixin):
            module.hy_register(name, lora, manager.packed_modules_mapping)
    if attn is not None:
        from vllm.model_executor.layers.attention import Attention
        from vllm.v1.attention.backend import AttentionType
        for module in manager.model.modules():
            if isinstance(module, Attention) and getattr(module, "attn_type", AttentionType.DECODER) == AttentionType.DECODER:
                module.hylorada_attn = attn

    def begin(_model, args, kwargs):
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        if positions is None:
            raise RuntimeError("hylorada_patches: the LoRA model was called without `positions`; the HyLoRADA "
                               "layers need each token's position (p(pos))")
        if positions.dim() == 2:          # M-RoPE [3, T]: text tokens carry the same position in every row
            positions = positions[0]
        n = main.indices_len[0]
        state.begin_step(positions, None if n is None else main.token_lora_indices)
        return None

    def end(_model, _args, _out):
        state.end_step()

    manager.model.register_forward_pre_hook(begin, with_kwargs=True)
    manager.model.register_forward_hook(end)
    landmarks.attach(manager.model, lora)
    return state


def write_slot(manager, lora_id: int) -> None:
    """The HyLoRADA parts of adapter `lora_id` into the slot vLLM just gave it."""
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
            module.hy_set(index, served, state.lora)


def use_path(manager, path: str) -> str:
    """Switch a running engine's LoRA path (control.py's RPC): every HyLoRADA layer keeps or drops vLLM's slot
    copies for it (layers.hy_use_copies), then the state re-picks its implementation. ValueError for an unknown
    path, before anything changes."""
    from .layers import HyLoRADALinearMixin
    from .lora_path import needs_copies, pick
    pick(path)
    for module in manager.modules.values():
        if isinstance(module, HyLoRADALinearMixin):
            module.hy_use_copies(needs_copies(path))
    manager.hylorada.lora.use_path(path)
    return path


def manager_init(orig, self, *args, **kwargs) -> None:
    orig(self, *args, **kwargs)
    build_state(self)


def activate_adapter(orig, self, lora_id: int) -> bool:
    result = orig(self, lora_id)
    if result:
        write_slot(self, lora_id)
    return result


def set_active_loras(orig, self, input_batch, num_scheduled_tokens, *args, **kwargs):
    result = orig(self, input_batch, num_scheduled_tokens, *args, **kwargs)
    manager = getattr(getattr(self, "lora_manager", None), "_adapter_manager", None)
    state = getattr(manager, "hylorada", None)
    if state is not None and state.attn is not None:
        n = input_batch.num_reqs               # copies: read when the forward starts
        state.set_requests(input_batch.request_lora_mapping[:n].copy(), input_batch.num_prompt_tokens[:n].copy(),
                           list(manager.lora_index_to_id))
    return result


def install() -> None:
    from vllm.lora.model_manager import LoRAModelManager
    from vllm.v1.worker.lora_model_runner_mixin import LoRAModelRunnerMixin
    wrap(LoRAModelManager, "__init__")(manager_init)
    wrap(LoRAModelManager, "activate_adapter")(activate_adapter)
    wrap(LoRAModelRunnerMixin, "set_active_loras")(set_active_loras)
