"""Reading a served adapter folder: JSON and safetensors readers that refuse instead of crashing, and `load_served`.

Every failure raises AdapterError naming the file, the tensor and the reason. Pickle files are
refused by name and never opened.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from .adapter import ServedAdapter
from .checks import check_against_base, check_consistency
from .layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, DYNAMIC, META, PICKLE_SUFFIXES, AdapterError, lora_key
from .meta import ServedMeta
from .peft import check_peft_config, peft_scaling


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise AdapterError(path, "missing file")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(path, f"not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise AdapterError(path, "must hold a JSON object")
    return d


def read_tensors(path: Path) -> dict[str, Tensor]:
    """safetensors only; a pickle file in its place is refused by name, never opened."""
    if not path.is_file():
        for suf in PICKLE_SUFFIXES:
            if path.with_suffix(suf).exists():
                raise AdapterError(path.with_suffix(suf), f"pickle file found instead of {path.name}; pickle is never "
                                   "loaded (it can run code) — re-save the tensors as safetensors")
        raise AdapterError(path, "missing file")
    from safetensors.torch import load_file
    try:
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure is a refusal
        raise AdapterError(path, f"not a readable safetensors file ({e})") from None
    for k, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise AdapterError(path, "contains NaN or Inf", k)
    return tensors


def load_served(path: str | Path, base_config=None, max_rank: int | None = None) -> ServedAdapter:
    """Read and validate a served adapter folder (or a plain PEFT LoRA folder, kind 'lora').

    base_config: a transformers config; when given, every tensor's name and shape and the
    base's shape_hash are checked against it. max_rank: the largest rank the server allows.
    """
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(path, "adapter folder does not exist")
    cfg = read_json(path / ADAPTER_CONFIG)
    plain = not (path / META).exists()
    check_peft_config(path, cfg, plain)
    meta = ServedMeta.plain() if plain else ServedMeta.parse(read_json(path / META), path / META)
    lora = read_tensors(path / ADAPTER_WEIGHTS)
    dynamic = read_tensors(path / DYNAMIC) if (meta.needs_dynamic_file or (path / DYNAMIC).exists()) else {}
    ad = ServedAdapter(path=path, meta=meta, peft_config=cfg, lora=lora, dynamic=dynamic,
                       target_modules=list(cfg["target_modules"]) if not isinstance(cfg["target_modules"], str) else [cfg["target_modules"]])
    check_consistency(ad)
    if plain:  # fold PEFT's own scale so lora always holds B'
        for (i, mod) in ad.modules():
            s = peft_scaling(cfg, i, mod, ad.lora[lora_key(i, mod, "A")].shape[0])
            if s != 1.0:
                ad.lora[lora_key(i, mod, "B")] = ad.lora[lora_key(i, mod, "B")] * s
    ad.rank = max(a.shape[0] for (a, _) in (ad.layer_lora(i, m) for i, m in ad.modules()))
    if max_rank is not None and ad.rank > max_rank:
        i, m = next((i, m) for i, m in ad.modules() if ad.layer_lora(i, m)[0].shape[0] == ad.rank)
        raise AdapterError(path / ADAPTER_WEIGHTS, f"rank {ad.rank} is above the server's max_rank {max_rank}", lora_key(i, m, "A"))
    if base_config is not None:
        check_against_base(ad, base_config)
    return ad
