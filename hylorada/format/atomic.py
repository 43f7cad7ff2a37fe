"""Publish a folder all at once: write into a hidden temporary sibling, then rename.

    with atomic_dir("out/my-adapter") as tmp:   # tmp = out/.my-adapter.tmp-<random>
        write files into tmp ...
    # success: tmp renamed to out/my-adapter in one step
    # any exception: tmp removed, out/my-adapter untouched (absent or as it was)

The rename is atomic on one filesystem, so a watcher scanning `out/` never sees a
half-written `my-adapter`. Temporary names start with "." so scanners can skip them.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path


class OutputExistsError(FileExistsError):
    """OUT_DIR already holds something; we never write over a published folder."""


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path, replace: bool = False):
    """Yield a fresh temporary folder beside `out_dir`; rename it to `out_dir` on success.

    An existing empty `out_dir` is replaced; a non-empty one is refused (before any work),
    because a published adapter must never change in place (DESIGN.md §6: publish a new path).
    replace=True (checkpoints, caches): a non-empty `out_dir` is moved aside to a hidden name in one
    rename, the new folder renamed in, then the old one removed — readers see the old or the new, whole.
    Files are fsynced at every depth before the rename.
    """
    out = Path(out_dir).absolute()
    if not replace and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputExistsError(f"{out}: already exists and is not empty; refusing to overwrite (choose a new OUT_DIR)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):         # data on disk before the name becomes visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if out.exists():
            if replace and any(out.iterdir()):
                old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(out, old)
            else:
                out.rmdir()              # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
