"""RoPE scaling (linear, dynamic NTK, YaRN) written into a transformers config before the model is built.

transformers 5.x computes RoPE frequencies when the rotary embedding is constructed, from
`config.rope_parameters`; assigning `config.rope_scaling` afterwards changes nothing (DESIGN.md §6).
So the one way in is: load the base config, `apply_rope_scaling(hf_config, cfg)`, then build the model.
The frequencies themselves are transformers' own (ROPE_INIT_FUNCTIONS); nothing here recomputes them.

Forms of one setting:
    meta       hylorada.json "rope_scaling": {"rope_type", "factor", "original_max_position_embeddings"} | None
    rope_parameters(meta, hf_config)   the complete `config.rope_parameters` dict (rope_theta included)
    hf_overrides(meta, hf_config)      the same as a config update: {"rope_parameters": ..., "max_position_embeddings": n}
    rope_table(meta, hf_config, rows)  [rows, rotary_dim] cos/sin table, the layout of vLLM's rotary cache: what the
                                       server serves each adapter's tokens with (hylorada_patches.rope)

Lengths: linear and YaRN set max_position_embeddings = original * factor. transformers' dynamic NTK
uses max_position_embeddings AS the original length (it rescales the base once a sequence grows past
it), so dynamic sets max_position_embeddings = original.

Dynamic NTK is not a table: transformers recomputes the base from each forward's length (no change up to the
original length), and a KV cache holds keys rotated at whatever base their forward had. Served, its table is the
unscaled one (`rope_table`): exact up to the original length; past it, transformers would rescale and the server
does not (docs/serving.md). linear and YaRN are static: one table each, exact at every position.
"""
from __future__ import annotations

import copy
import importlib

import torch
from torch import Tensor

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


def served_context(meta: dict | None, hf_config) -> int:
    """The longest sequence an adapter with `meta` is meant for on this base: original * factor for linear and YaRN;
    the base's own length for no scaling and for dynamic NTK (served unscaled, see the module docstring)."""
    if meta is None or meta["rope_type"] == "dynamic":
        return int(hf_config.max_position_embeddings)
    return scaled_max_position(meta, hf_config)


def rotary_class(hf_config):
    """transformers' rotary-embedding class of this base's architecture (Llama's when the model type has none)."""
    kind = str(getattr(hf_config, "model_type", "llama"))
    for mt in (kind, "llama"):
        try:
            mod = importlib.import_module(f"transformers.models.{mt}.modeling_{mt}")
        except ImportError:
            continue
        found = [v for k, v in vars(mod).items() if k.endswith("RotaryEmbedding") and isinstance(v, type)
                 and "Vision" not in k]
        if found:
            return found[0]
    raise ValueError(f"no transformers rotary embedding for model type {kind!r}")


def scaled_rotary(meta: dict | None, hf_config):
    """transformers' rotary embedding for `meta` on this base, built from the config apply_rope_scaling writes —
    the very module a model trained or referenced with this setting uses. Dynamic NTK is built unscaled."""
    cfg = copy.deepcopy(hf_config)
    if meta is not None and meta["rope_type"] != "dynamic":
        apply_rope_scaling(cfg, meta)
    return rotary_class(cfg)(config=cfg)


@torch.no_grad()
def rope_table(meta: dict | None, hf_config, rows: int) -> Tensor:
    """cos/sin for positions t = 0..rows-1, float32 [rows, rotary_dim]: row t = [cos(t·f)·a | sin(t·f)·a], f the
    rotary_dim/2 inverse frequencies and a the attention factor (YaRN's mscale; 1 otherwise) — vLLM's rotary cache
    layout (first half cos, second half sin), computed by transformers' own rotary for this setting
    (`scaled_rotary`), so each row equals what the reference applies at that position."""
    rot = scaled_rotary(meta, hf_config)
    pos = torch.arange(rows).unsqueeze(0)
    cos, sin = rot(torch.zeros(1, dtype=torch.float32), pos)          # [1, rows, rotary_dim] each, halves repeated
    half = cos.shape[-1] // 2
    return torch.cat((cos[0, :, :half], sin[0, :, :half]), dim=-1).float()
