"""RoPE scaling is a property of the engine (DESIGN.md §4): one setting for every adapter it serves.

    engine_hf_overrides(adapters, base_config) -> hylorada.rope.hf_overrides(...) | {}
        for `vllm.LLM(..., hf_overrides=...)` (measured to match transformers within 1e-6 for
        linear, dynamic and YaRN); refuses adapters whose rope_scaling disagree.
    check_engine_rope(served, hf_config)
        at load time (loading.py): an adapter whose rope_scaling differs from the running engine's is
        refused with AdapterError before anything is loaded.
"""
from __future__ import annotations

from hylorada.served import META, AdapterError


def _norm(rs: dict | None) -> dict | None:
    """Comparable form of a rope_scaling dict (None / default = no scaling)."""
    if not rs or rs.get("rope_type", "default") == "default":
        return None
    out = {"rope_type": rs["rope_type"], "factor": float(rs["factor"])}
    if rs["rope_type"] == "yarn" and rs.get("original_max_position_embeddings"):
        out["original_max_position_embeddings"] = int(rs["original_max_position_embeddings"])
    return out


def common_rope_scaling(adapters) -> dict | None:
    """The one rope_scaling every adapter agrees on; AdapterError naming the first that disagrees."""
    adapters = [a for a in adapters if a is not None]
    if not adapters:
        return None
    first = _norm(adapters[0].meta.get("rope_scaling"))
    for a in adapters[1:]:
        if _norm(a.meta.get("rope_scaling")) != first:
            raise AdapterError(a.path / META, f"rope_scaling {a.meta.get('rope_scaling')!r} differs from "
                               f"{adapters[0].path}'s {first!r}; one engine has one RoPE setting", "rope_scaling")
    return first


def engine_hf_overrides(adapters, base_config) -> dict:
    """hf_overrides for the engine serving `adapters` on `base_config` ({} when no scaling)."""
    from hylorada.rope import hf_overrides
    adapters = [a for a in adapters if a is not None]
    common_rope_scaling(adapters)
    meta = next((a.meta.get("rope_scaling") for a in adapters if a.meta.get("rope_scaling")), None)
    return {} if meta is None else hf_overrides(meta, base_config)


def check_engine_rope(served, hf_config) -> None:
    engine = _norm(dict(getattr(hf_config, "rope_parameters", None) or {}))
    if _norm(served.meta.get("rope_scaling")) != engine:
        raise AdapterError(served.path / META, f"rope_scaling {served.meta.get('rope_scaling')!r} differs from the "
                           f"running engine's RoPE {engine!r}; start an engine with this setting "
                           "(patches.rope.engine_hf_overrides)", "rope_scaling")
