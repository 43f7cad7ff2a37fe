"""RoPE scaling is a property of the engine (DESIGN.md §4): one setting for every adapter it serves.

    engine_hf_overrides(adapters, base_config) -> hylorada.method.rope.hf_overrides(...) | {}
        for `vllm.LLM(..., hf_overrides=...)` (measured to match transformers within 1e-6 for
        linear, dynamic and YaRN); refuses adapters whose rope_scaling disagree.
    check_engine_rope(served, hf_config)
        at load time (loading.py): an adapter whose rope_scaling differs from the running engine's is
        refused with AdapterError before anything is loaded.
"""
from __future__ import annotations

from hylorada.format.layout import META, AdapterError
from hylorada.format.meta import rope_key


def common_rope_scaling(adapters) -> dict | None:
    """The one rope_scaling every adapter agrees on; AdapterError naming the first that disagrees."""
    adapters = [a for a in adapters if a is not None]
    if not adapters:
        return None
    first = rope_key(adapters[0].meta.rope_scaling)
    for a in adapters[1:]:
        if rope_key(a.meta.rope_scaling) != first:
            raise AdapterError(a.path / META, f"rope_scaling {a.meta.rope_scaling!r} differs from "
                               f"{adapters[0].path}'s {first!r}; one engine has one RoPE setting", "rope_scaling")
    return first


def engine_hf_overrides(adapters, base_config) -> dict:
    """hf_overrides for the engine serving `adapters` on `base_config` ({} when no scaling)."""
    from hylorada.method.rope import hf_overrides
    adapters = [a for a in adapters if a is not None]
    common_rope_scaling(adapters)
    meta = next((a.meta.rope_scaling for a in adapters if a.meta.rope_scaling), None)
    return {} if meta is None else hf_overrides(meta, base_config)


def check_engine_rope(served, hf_config) -> None:
    engine = rope_key(dict(getattr(hf_config, "rope_parameters", None) or {}))
    if rope_key(served.meta.rope_scaling) != engine:
        raise AdapterError(served.path / META, f"rope_scaling {served.meta.rope_scaling!r} differs from the "
                           f"running engine's RoPE {engine!r}; start an engine with this setting "
                           "(hylorada_patches.rope.engine_hf_overrides)", "rope_scaling")
