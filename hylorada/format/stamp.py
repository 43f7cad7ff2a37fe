"""The checked stamp: keyed proof that a folder's exact files passed `load_served`'s value checks, so a second
reader with the same key (the engine's worker, loading a version again after its CPU cache evicted it) can skip
reading the LoRA values and checking them again.

    <folder>/.hylorada_checked = hex HMAC-SHA256(key, json([context, files]))
        files    [[name, size, mtime_ns, inode], ...] of the format's files present (sorted by name)
        context  what the checks were made against: "<base shape_hash>:<max_rank>" (`context`)

The key is a per-server secret (hylorada-serve makes one at start and hands it to its engine processes in
HYLORADA_CHECKED_KEY); without it nothing can write a stamp that verifies, and a reader without a key never trusts
one. A file rewritten, replaced or touched after the stamp changes its size, mtime or inode, so the stamp no longer
verifies and the reader checks everything again. Structural checks (names, shapes, rank, fit to the base) are
cheap and always run; only the value checks (finite, magnitudes) and the read of the LoRA values are skipped.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

from .layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, DYNAMIC, META

STAMP = ".hylorada_checked"
STAMPED_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, META, DYNAMIC)
MIN_KEY_BYTES = 16


def context(base_config, max_rank: int | None) -> str:
    """What the checks were made against: the base's shape hash (none: "-") and the rank bound."""
    from .base import base_shape_hash
    return f"{base_shape_hash(base_config) if base_config is not None else '-'}:{max_rank}"


def files_signature(folder: Path) -> list[list]:
    """[[name, size, mtime_ns, inode], ...] of the format's files in `folder` (symlinks not followed)."""
    out = []
    for name in STAMPED_FILES:
        try:
            st = (folder / name).lstat()
        except FileNotFoundError:
            continue
        out.append([name, st.st_size, st.st_mtime_ns, st.st_ino])
    return out


def digest(folder: Path, key: bytes, ctx: str) -> str:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"a stamp key needs at least {MIN_KEY_BYTES} bytes (got {len(key)})")
    msg = json.dumps([ctx, files_signature(folder)], separators=(",", ":")).encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def write_stamp(folder: str | Path, key: bytes, ctx: str) -> None:
    """Record that `folder`'s files as they are now passed the checks made against `ctx`."""
    folder = Path(folder)
    (folder / STAMP).write_text(digest(folder, key, ctx))


def stamp_ok(folder: str | Path, key: bytes, ctx: str) -> bool:
    """True when `folder` holds a stamp for its present files and `ctx` under `key`; False for no key, no stamp,
    an unreadable one, or any file changed since it was written."""
    if not key:
        return False
    folder = Path(folder)
    try:
        f = folder / STAMP
        if f.is_symlink() or f.stat().st_size > 256:
            return False
        written = f.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return False
    return hmac.compare_digest(written, digest(folder, key, ctx))
