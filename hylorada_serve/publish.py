"""Copy an adapter folder out of DIR/ into a private, immutable published folder, then validate the copy.

vLLM reads the published copy, never the watched folder, so

  * what was validated is exactly what vLLM loads (a writer changing DIR/name afterwards changes nothing),
  * every version has its own path (prefix-cache keys include the path; DESIGN.md §6),
  * the engine can re-read a version after its CPU LRU evicted it, while requests admitted on it are running.

Only regular files at the top level with a .json or .safetensors suffix are copied. Pickle files are never
opened: a folder with no adapter_model.safetensors is refused even if it has adapter_model.bin (vLLM would
fall back to torch.load on it). Symlinks are followed only when they resolve inside DIR/.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hylorada_patches.loading import check_servable     # the engine patches' own pre-load checks (vLLM-free)

from .store import Signature, folder_signature

COPIED_SUFFIXES = (".json", ".safetensors")
MAX_ADAPTER_BYTES = 8 << 30


class AdapterRefused(ValueError):
    """One line naming the file and the reason; the adapter is not served, everything else keeps serving."""


@dataclass(frozen=True)
class AdapterInfo:
    kind: str                       # lora | dora | hylorada
    rank: int
    size_bytes: int                 # tensor bytes
    dynamic_parts: tuple = ()


def stage(src: Path, dst: Path, root: Path, expect: Signature | None) -> None:
    """Copy src (= DIR/name) to dst. Raises AdapterRefused, or ChangedWhileCopying if src moved under us."""
    root_r = root.resolve()
    src_r = src.resolve()
    if not _inside(src_r, root_r):
        raise AdapterRefused(f"{src}: resolves outside the adapters folder ({src_r})")
    dst.mkdir(parents=True)
    total = 0
    try:
        for f in sorted(src.iterdir()):
            if not f.name.endswith(COPIED_SUFFIXES):
                continue
            real = f.resolve()
            if f.is_symlink() and not _inside(real, root_r):
                raise AdapterRefused(f"{f}: symlink pointing outside the adapters folder")
            if not real.is_file():
                continue
            total += real.stat().st_size
            if total > MAX_ADAPTER_BYTES:
                raise AdapterRefused(f"{src}: larger than {MAX_ADAPTER_BYTES >> 30} GiB")
            shutil.copyfile(real, dst / f.name)
        if expect is not None and folder_signature(src) != expect:
            raise ChangedWhileCopying(f"{src}: changed while it was being copied; waiting until it is stable")
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)
        raise


class ChangedWhileCopying(RuntimeError):
    """The folder is still being written; not a refusal (it is retried once stable)."""


def check(path: Path, src: Path, base_config=None, max_rank: int | None = None) -> AdapterInfo:
    """Validate the published copy `path` of `src`: hylorada.format.load.load_served (names, shapes, rank, finite
    values, against the base) and, given the base, the engine patches' check_servable.

    Messages name the source folder's files, not the private copy."""
    from hylorada.format.layout import AdapterError
    from hylorada.format.load import load_served

    def refuse(msg: str) -> AdapterRefused:
        return AdapterRefused(msg.replace(str(path), str(src)))

    if src.is_dir() and not any(src.iterdir()):
        raise refuse(f"{src}: empty folder (expected adapter_config.json + adapter_model.safetensors)")
    if not (path / "adapter_model.safetensors").is_file():
        raise refuse(f"{src / 'adapter_model.safetensors'}: missing (pickle files such as .bin are never loaded)")
    try:
        ad = load_served(path, base_config=base_config, max_rank=max_rank)
        if base_config is not None:
            check_servable(ad, base_config)        # parts the engine patches cannot apply; RoPE vs the engine
    except AdapterError as e:
        raise refuse(str(e)) from None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:     # corrupt files, bad JSON types
        raise refuse(f"{src}: unreadable adapter ({type(e).__name__}: {e})") from None
    return AdapterInfo(kind=ad.kind, rank=int(ad.rank), size_bytes=int(ad.size_bytes),
                       dynamic_parts=tuple(ad.dynamic_parts))


def engine_rope(adapters_dir: Path) -> tuple[dict | None, int]:
    """The RoPE setting for the engine (DESIGN.md §4): the `rope_scaling` most adapters in DIR/ ask for at
    start-up (no scaling wins ties), and how many ask for it. Adapters that differ are refused at load."""
    import json
    from collections import Counter

    from hylorada.format.layout import META, AdapterError
    from hylorada.format.load import read_json
    from hylorada.format.meta import ServedMeta

    votes: Counter = Counter()
    for d in sorted(p for p in adapters_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            rs = ServedMeta.parse(read_json(d / META), d / META).rope_scaling if (d / META).is_file() else None
        except (OSError, AdapterError, RecursionError):   # refused later, with the reason, like any bad adapter
            continue
        votes[json.dumps(rs, sort_keys=True)] += 1
    if not votes:
        return None, 0
    best, n = max(votes.items(), key=lambda kv: (kv[1], kv[0] == "null"))
    return json.loads(best), n


def discard(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _inside(path: Path, root: Path) -> bool:
    return path == root or str(path).startswith(str(root) + os.sep)
