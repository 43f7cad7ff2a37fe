"""RoPE scaling (linear, dynamic NTK, YaRN) written into a transformers config before the model is built.

transformers 5.x computes RoPE frequencies when the rotary embedding is constructed, from
`config.rope_parameters`; assigning `config.rope_scaling` afterwards changes nothing (DESIGN.md §6).
So the one way in is: load the base config, `apply_rope_scaling(hf_config, cfg)`, then build the model.
The frequencies themselves are transformers' own (ROPE_INIT_FUNCTIONS); nothing here recomputes them.

Three forms of one setting:
    meta       hylorada.json "rope_scaling": {"rope_type", "factor", "original_max_position_embeddings"} | None
    rope_parameters(meta, hf_config)   the complete `config.rope_parameters` dict (rope_theta included)
    hf_overrides(meta, hf_config)      what the server passes to vLLM: {"rope_parameters": ..., "max_position_embeddings": n}

Lengths: linear and YaRN set max_position_embeddings = original * factor. transformers' dynamic NTK
uses max_position_embeddings AS the original length (it rescales the base once a sequence grows past
it), so dynamic sets max_position_embeddings = original.

Known divergence: transformers' dynamic NTK recomputes the base from each forward's length (no change up to
the original length), while vLLM's DynamicNTKScalingRotaryEmbedding fixes the base at length original*factor
(read in vllm 0.32's rotary_embedding code, not measured here). linear and YaRN are static in both.
"""
from __future__ import annotations

import copy

from hylorada.config import HyLoRADAConfig

ROPE_KEYS = ("rope_type", "factor", "original_max_position_embeddings")


def base_rope_parameters(hf_config) -> dict:
    """The base's own rope_parameters (transformers 5 always has rope_theta and rope_type there)."""
    rp = getattr(hf_config, "rope_parameters", None)
    if not isinstance(rp, dict) or "rope_theta" not in rp:
        raise ValueError("this transformers config has no rope_parameters with rope_theta (transformers>=5 needed)")
    return dict(rp)


def rope_scaling_meta(cfg: HyLoRADAConfig, hf_config) -> dict | None:
    """The setting as stored in hylorada.json, or None when the config asks for no scaling.

    original_max_position_embeddings defaults to the base's max_position_embeddings.
    """
    if cfg.rope_scaling_type is None:
        return None
    orig = cfg.rope_original_max_position or int(hf_config.max_position_embeddings)
    return {"rope_type": cfg.rope_scaling_type, "factor": float(cfg.rope_scaling_factor),
            "original_max_position_embeddings": int(orig)}


def rope_parameters(meta: dict | None, hf_config) -> dict:
    """Complete `rope_parameters` for `meta` on this base (keys the base had, e.g. partial_rotary_factor, kept)."""
    base = base_rope_parameters(hf_config)
    if base.get("rope_type", "default") != "default" and meta is not None:
        raise ValueError(f"the base already uses RoPE scaling {base!r}; stacking HyLoRADA's {meta!r} on it is not supported")
    if meta is None:
        return base
    kind = meta["rope_type"]
    if kind not in ("linear", "dynamic", "yarn"):
        raise ValueError(f"rope_type must be linear, dynamic or yarn (got {kind!r})")
    out = {k: v for k, v in base.items() if k not in ROPE_KEYS}
    out.update(rope_type=kind, factor=float(meta["factor"]))
    if kind == "yarn":
        out["original_max_position_embeddings"] = int(meta["original_max_position_embeddings"])
    return out


def scaled_max_position(meta: dict | None, hf_config) -> int:
    """max_position_embeddings to use with `meta` (see the module docstring)."""
    if meta is None:
        return int(hf_config.max_position_embeddings)
    orig = int(meta["original_max_position_embeddings"])
    return orig if meta["rope_type"] == "dynamic" else int(round(orig * float(meta["factor"])))


def hf_overrides(meta: dict | None, hf_config) -> dict:
    """vLLM `hf_overrides` (and equally a dict to `hf_config.update`) for this setting."""
    return {"rope_parameters": rope_parameters(meta, hf_config), "max_position_embeddings": scaled_max_position(meta, hf_config)}


def apply_rope_scaling(hf_config, cfg: HyLoRADAConfig | dict | None):
    """Write the scaling into `hf_config` in place (before building the model); returns the meta dict or None.

    cfg: a HyLoRADAConfig, or an already-made meta dict (e.g. read back from hylorada.json).
    """
    meta = rope_scaling_meta(cfg, hf_config) if isinstance(cfg, HyLoRADAConfig) else copy.deepcopy(cfg)
    if meta is None:
        return None
    over = hf_overrides(meta, hf_config)
    hf_config.rope_parameters = over["rope_parameters"]
    hf_config.max_position_embeddings = over["max_position_embeddings"]
    return meta


def load_scaled_config(base_dir, cfg: HyLoRADAConfig | dict | None):
    """AutoConfig of `base_dir` with the scaling applied (pass it as `config=` to from_pretrained)."""
    from transformers import AutoConfig
    hf_config = AutoConfig.from_pretrained(base_dir)
    apply_rope_scaling(hf_config, cfg)
    return hf_config
