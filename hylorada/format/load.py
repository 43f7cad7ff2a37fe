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
from .checks import check_against_base, check_consistency, check_magnitudes
from .layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, DYNAMIC, INDEX_TENSORS, META, PICKLE_SUFFIXES, AdapterError, lora_key
from .meta import ServedMeta
from .peft import check_peft_config, peft_scaling


MAX_JSON_BYTES = 1 << 20          # adapter_config.json / hylorada.json: a few KiB in practice
MAX_HEADER_BYTES = 8 << 20        # a safetensors header: ~100 bytes a tensor; 8 MiB is ~80k tensors
MAX_TENSORS = 65536
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
INDEX_DTYPE = "I64"               # embed_tokens.ids (layout.INDEX_TENSORS) only
TORCH_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
                INDEX_DTYPE: torch.int64}


def read_json(path: Path) -> dict:
    """A JSON object from `path`, bounded in size and nesting; AdapterError otherwise."""
    if not path.is_file():
        raise AdapterError(path, "missing file")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise AdapterError(path, f"{path.stat().st_size} bytes: larger than the {MAX_JSON_BYTES} bytes a config may have")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(path, f"not valid JSON ({e})") from None
    except RecursionError:
        raise AdapterError(path, "JSON nested too deeply") from None
    if not isinstance(d, dict):
        raise AdapterError(path, "must hold a JSON object")
    return d


def read_tensors(path: Path, values: bool = True) -> dict[str, Tensor]:
    """safetensors only; a pickle file in its place is refused by name, never opened. Every float tensor is finite.

    values=False: the tensors' names, shapes and dtypes from the header only, as tensors on the meta device (no
    data read, nothing to check for finiteness): for values a checked stamp vouches for (format.stamp)."""
    if not path.is_file():
        for suf in PICKLE_SUFFIXES:
            if path.with_suffix(suf).exists():
                raise AdapterError(path.with_suffix(suf), f"pickle file found instead of {path.name}; pickle is never "
                                   "loaded (it can run code) — re-save the tensors as safetensors")
        raise AdapterError(path, "missing file")
    entries = check_header(path)
    if not values:
        try:
            return {k: torch.empty([int(n) for n in v["shape"]], dtype=TORCH_DTYPES[v["dtype"]], device="meta")
                    for k, v in entries.items()}
        except (KeyError, TypeError, ValueError) as e:
            raise AdapterError(path, f"not a readable safetensors file (bad header entry: {e})") from None
    from safetensors.torch import load_file
    try:
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure is a refusal
        raise AdapterError(path, f"not a readable safetensors file ({e})") from None
    if (bad := first_nonfinite(tensors)) is not None:
        raise AdapterError(path, "contains NaN or Inf", bad)
    return tensors


SMALL = 1 << 16                          # elements: tensors up to this size are checked together ...
BATCH = 1 << 18                          # ... this many elements at a time (1 MiB of float32 copied at most)


def all_finite(tensors) -> bool:
    """Every floating-point tensor holds only finite values. Small tensors (a side file's c vectors and w_pos
    scalars, hundreds of them; on a small base every LoRA A and B too) are flattened together per dtype, BATCH
    elements at a time, and checked with one isfinite per batch: one isfinite per tensor cost ~10 us each, and a
    batch bounds the copy (a whole adapter file was once copied at once). Large ones are checked where they are."""
    pending: dict = {}                                                  # dtype -> [flattened tensors, elements]
    for t in tensors:
        if not t.is_floating_point():
            continue
        if t.numel() > SMALL:
            if not bool(torch.isfinite(t).all()):
                return False
            continue
        batch = pending.setdefault(t.dtype, [[], 0])
        batch[0].append(t.reshape(-1))
        batch[1] += t.numel()
        if batch[1] >= BATCH:
            if not bool(torch.isfinite(torch.cat(batch[0])).all()):
                return False
            batch[0], batch[1] = [], 0
    return all(not ts or bool(torch.isfinite(torch.cat(ts)).all()) for ts, _ in pending.values())


def first_nonfinite(tensors: dict) -> str | None:
    """The name of the first floating-point tensor holding a NaN or Inf (dict order), None when all are finite:
    all_finite first, then one tensor at a time only when something is wrong (the error names the tensor)."""
    if all_finite(tensors.values()):
        return None
    return next(k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all()))


def check_header(path: Path) -> dict[str, dict]:
    """Read only the safetensors header (8-byte length + JSON) and refuse, before any tensor is read, a header
    that is too large, holds too many tensors, or holds tensors that are not floating point (int/bool weights; the
    side file's embedding row indices, layout.INDEX_TENSORS, are int64 and nothing else). Returns the header's
    tensor entries ({name: {"dtype", "shape", "data_offsets"}})."""
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = None if n > MAX_HEADER_BYTES else json.loads(fh.read(n))
    except (OSError, ValueError, RecursionError) as e:
        raise AdapterError(path, f"not a readable safetensors file ({type(e).__name__})") from None
    if n > path.stat().st_size - 8:
        raise AdapterError(path, f"not a readable safetensors file (its header length {n} runs past the file's end)")
    if n > MAX_HEADER_BYTES:
        raise AdapterError(path, f"safetensors header of {n} bytes (at most {MAX_HEADER_BYTES})")
    if not isinstance(header, dict):
        raise AdapterError(path, "not a readable safetensors file (header is not an object)")
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(entries) > MAX_TENSORS:
        raise AdapterError(path, f"{len(entries)} tensors (at most {MAX_TENSORS})")
    for k, v in entries.items():
        dtype = v.get("dtype") if isinstance(v, dict) else None
        if k in INDEX_TENSORS and path.name == DYNAMIC:
            if dtype != INDEX_DTYPE:
                raise AdapterError(path, f"dtype {dtype!r}: embedding row indices must be int64 ({INDEX_DTYPE!r})", k)
        elif dtype not in FLOAT_DTYPES:
            raise AdapterError(path, f"dtype {dtype!r}: adapter weights must be floating point ({sorted(FLOAT_DTYPES)})", k)
    return entries


def load_served(path: str | Path, base_config=None, max_rank: int | None = None,
                base_norms: dict[str, float] | None = None, values_checked: bool = False) -> ServedAdapter:
    """Read and validate a served adapter folder (or a plain PEFT LoRA folder, kind 'lora').

    base_config: a transformers config; when given, every tensor's name and shape and the
    base's shape_hash are checked against it. max_rank: the largest rank the server allows.
    base_norms: the base's ||W||_F per linear (format.base.base_weight_norms); every LoRA delta is
    bounded relative to it (without it, by an absolute bound on A and B').
    values_checked: a checked stamp (format.stamp) vouches for these exact files' values: the LoRA tensors come
    from the header only (meta device: shapes for every structural check, no data) and the value checks
    (finite, magnitudes) are skipped; the side file is still read (its values are served). The caller drops
    `lora` (the engine's loader reads the weights itself).
    """
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(path, "adapter folder does not exist")
    cfg = read_json(path / ADAPTER_CONFIG)
    plain = not (path / META).exists()
    check_peft_config(path, cfg, plain)
    meta = ServedMeta.plain() if plain else ServedMeta.parse(read_json(path / META), path / META)
    lora = read_tensors(path / ADAPTER_WEIGHTS, values=not values_checked)
    dynamic = read_tensors(path / DYNAMIC, values=True) if (meta.needs_dynamic_file or (path / DYNAMIC).exists()) else {}
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
    if not values_checked:
        check_magnitudes(ad, base_norms)
    return ad
