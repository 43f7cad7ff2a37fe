"""The base model as adapters see it: its identity and shape hash, its linear shapes, its config and weights.

Read from a local transformers folder (safetensors only); nothing here builds a real model.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path

import torch

from .layout import AdapterError


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


@functools.lru_cache(maxsize=8)
def _linear_shapes(config_json: str) -> dict[str, tuple[int, int]]:
    from transformers import AutoConfig, AutoModelForCausalLM
    d = json.loads(config_json)
    cfg = AutoConfig.for_model(d.pop("model_type"), **d)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return {n.removeprefix("model."): tuple(m.weight.shape) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")}


def base_linear_shapes(hf_config) -> dict[str, tuple[int, int]]:
    """'layers.{i}.self_attn.q_proj' -> (d_out, d_in) for every decoder linear (built on the meta device)."""
    return _linear_shapes(config_json(hf_config))


_JSON: dict[int, tuple[object, dict, str]] = {}      # id(config) -> (config, deep copy of its __dict__, its JSON)


def config_json(hf_config) -> str:
    """hf_config.to_json_string(use_diff=False), remembered per config object for as long as its attributes stay
    equal to a deep copy taken then (a changed or replaced attribute serializes again). transformers' serializer
    took ~0.6 ms, and the engine worker checks every adapter load against the same config. Equal means equal
    with the same types all the way down (`same`): 64 == 64.0 == True in Python, not in JSON. A value without
    value equality never compares equal to its copy: that config serializes every time (slower, never stale)."""
    hit = _JSON.get(id(hf_config))
    if hit is not None and hit[0] is hf_config and same(hit[1], hf_config.__dict__):
        return hit[2]
    text = hf_config.to_json_string(use_diff=False)
    if len(_JSON) >= 8:
        _JSON.clear()
    _JSON[id(hf_config)] = (hf_config, copy.deepcopy(hf_config.__dict__), text)
    return text


def same(a, b) -> bool:
    """a == b with the same types at every level of dicts, lists and tuples (True, 1 and 1.0 are apart)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def base_config(base_dir: str | Path):
    """The base's transformers config; AdapterError when base_dir is not a model folder."""
    from transformers import AutoConfig
    f = Path(base_dir) / "config.json"
    if not f.is_file():
        raise AdapterError(f, "missing file (--base must be a local transformers model folder)")
    return AutoConfig.from_pretrained(str(base_dir))


def read_base_tensors(base_dir: str | Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Tensors of the base checkpoint by HF name (single file or sharded index; safetensors only)."""
    from safetensors import safe_open
    d = Path(base_dir)
    index = d / "model.safetensors.index.json"
    if index.is_file():
        where = json.loads(index.read_text())["weight_map"]
    elif (d / "model.safetensors").is_file():
        where = {n: "model.safetensors" for n in names}
    else:
        raise AdapterError(d / "model.safetensors", "missing: the base must be a safetensors transformers folder")
    out: dict[str, torch.Tensor] = {}
    for file in sorted({where.get(n, "") for n in names}):
        if not file:
            raise AdapterError(d, "base has no tensor", next(n for n in names if n not in where))
        with safe_open(str(d / file), framework="pt") as f:
            keys = set(f.keys())
            for n in names:
                if where.get(n) == file:
                    if n not in keys:
                        raise AdapterError(d / file, "base has no tensor", n)
                    out[n] = f.get_tensor(n)
    return out


@functools.lru_cache(maxsize=4)
def base_weight_norms(base_dir: str) -> dict[str, float]:
    """'layers.{i}.{module}' -> ||W||_F (float64) of every decoder linear of a local safetensors base, read
    tensor by tensor (one at a time in memory), cached per folder for the process."""
    from safetensors import safe_open
    d = Path(base_dir)
    index = d / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    out: dict[str, float] = {}
    for file in files:
        with safe_open(str(d / file), framework="pt") as f:
            for name in f.keys():
                if name.startswith("model.layers.") and name.endswith("_proj.weight"):
                    out[name.removeprefix("model.").removesuffix(".weight")] = float(f.get_tensor(name).double().norm())
    return out

