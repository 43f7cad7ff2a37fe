"""Identity of a base model: what an adapter was made for, and a hash of the shapes it depends on."""
from __future__ import annotations

import hashlib
import json


def base_shapes(hf_config) -> dict:
    """The base-config numbers every adapter tensor's shape depends on."""
    heads = hf_config.num_attention_heads
    return {
        "architecture": (getattr(hf_config, "architectures", None) or [type(hf_config).__name__])[0],
        "hidden_size": hf_config.hidden_size,
        "intermediate_size": hf_config.intermediate_size,
        "num_hidden_layers": hf_config.num_hidden_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": getattr(hf_config, "num_key_value_heads", None) or heads,
        "head_dim": getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads,
        "vocab_size": hf_config.vocab_size,
    }


def base_shape_hash(hf_config) -> str:
    """sha256 (first 16 hex) of base_shapes(): equal for bases an adapter's tensors fit."""
    return hashlib.sha256(json.dumps(base_shapes(hf_config), sort_keys=True).encode()).hexdigest()[:16]


def base_identity(hf_config, name: str | None = None) -> dict:
    return {"base_model_name_or_path": name or getattr(hf_config, "_name_or_path", "") or "",
            "architecture": base_shapes(hf_config)["architecture"], "shape_hash": base_shape_hash(hf_config)}


def served_base(hf_config, name: str) -> dict:
    """The `base` block of hylorada.json: {"name", "architecture", "shape_hash"}."""
    return {"name": str(name), "architecture": base_shapes(hf_config)["architecture"],
            "shape_hash": base_shape_hash(hf_config)}
