"""Wraps `vllm.lora.model_manager.LoRAModelManager.__init__` so that each step's token positions and
slots reach the HyLoRADA layers, computed once per step:

  - a HyState (state.py) is created per manager and attached to its punica wrapper(s) and to itself;
  - every HyLoRADA layer registers its (layer, module slices) rows;
  - a forward pre-hook on the LoRA model reads `positions` — the very tensor the model runner passes
    to the model (`self.model(input_ids=..., positions=self.positions[:n])`, i.e. what RoPE uses) —
    and the punica wrapper's `token_lora_indices` (set by set_active_loras earlier in the same step),
    then computes groups and p(pos) for all layers (HyState.begin_step). This covers prefill,
    chunked prefill, decode and mixed steps alike: the runner flattens them all into one token list;
  - a forward hook clears the step data (nothing outlives the forward);
  - landmark hooks on the MLP blocks (landmarks.py).
The CPU platform already runs LoRA engines eagerly (CompilationMode.NONE), so hooks fire every step.
"""
from __future__ import annotations

_ORIG = None


def attach(manager) -> None:
    from . import landmarks
    from .grouped_cpu import selected_path
    from .layers import HyLoRADALinearMixin
    from .state import HyState
    if manager.lora_config.fully_sharded_loras:
        raise RuntimeError("hylorada_patches: fully_sharded_loras is not supported by the HyLoRADA layers; "
                           "run without --fully-sharded-loras")
    from vllm.platforms import current_platform
    state = HyState(manager.lora_slots, grouped=selected_path(current_platform.is_cpu()) == "grouped",
                    device=manager.device)
    manager.hylorada = state
    wrappers = list(manager.punica_wrapper_mapping.values())
    for pw in wrappers:
        pw.hylorada = state
    for name, module in manager.modules.items():
        if isinstance(module, HyLoRADALinearMixin):
            module.hy_register(name, state, manager.packed_modules_mapping)
    main = wrappers[0]

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
    landmarks.attach(manager.model, state)


def install() -> None:
    global _ORIG
    from vllm.lora.model_manager import LoRAModelManager
    if _ORIG is not None:
        return
    _ORIG = LoRAModelManager.__init__

    def __init__(self, *args, **kwargs):
        _ORIG(self, *args, **kwargs)
        attach(self)

    LoRAModelManager.__init__ = __init__
