"""One look at the adapters folder DIR/, bounded: folder names, each folder's signature, and the scan bounds.

Pure I/O with no shared state (the watcher runs `observe` on a worker thread); store.py keeps the books.

Scan bounds. A look at a folder is iterative and stops at MAX_ENTRIES files + folders, MAX_DEPTH levels,
MAX_ADAPTER_BYTES of real size (blocks on disk) or FOLDER_SCAN_S seconds; a folder over a bound is refused with the
reason (cheaply: the walk stops there) and every other folder is judged as usual.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")   # \Z, not $: '$' matches before a final newline
READY_MARKER = ".ready"
# Scan bounds: a folder over any of them is refused with the reason (not walked further). Adapters are flat folders
# of four files; the bounds leave room for a README or a checkpoint sub-folder, not for a tree.
MAX_ENTRIES = 1024                  # files + sub-folders, counted as they are listed
MAX_DEPTH = 4                       # sub-folder levels
MAX_ADAPTER_BYTES = 8 << 30         # real size on disk (st_blocks * 512), all files together
FOLDER_SCAN_S = 1.0                 # one folder's walk stops after this long (slow disk): not judged this pass

Signature = tuple                   # ((relpath, size, mtime_ns), ...) sorted; () for an empty folder


class OverBound(Exception):
    """A folder over a scan bound; str() is the refusal reason."""


def folder_signature(path: Path, time_limit: float = FOLDER_SCAN_S) -> Signature | None:
    """(relpath, size, mtime_ns) of every file under `path` (links not followed), sorted; None if unreadable or not
    walked within `time_limit` seconds. Iterative (no recursion however deep); raises OverBound past MAX_ENTRIES,
    MAX_DEPTH or MAX_ADAPTER_BYTES of real size."""
    out, entries, real = [], 0, 0
    deadline = time.monotonic() + time_limit
    stack = [(str(path), "", 0)]
    try:
        while stack:
            folder, rel, depth = stack.pop()
            with os.scandir(folder) as it:
                for de in it:
                    entries += 1
                    if entries > MAX_ENTRIES:
                        raise OverBound(f"{path}: more than {MAX_ENTRIES} files and folders "
                                        "(an adapter is a few files)")
                    if time.monotonic() > deadline:
                        return None
                    r = os.path.join(rel, de.name)
                    if de.is_dir(follow_symlinks=False):
                        if depth >= MAX_DEPTH:
                            raise OverBound(f"{path}: folders nested more than {MAX_DEPTH} levels deep")
                        stack.append((de.path, r, depth + 1))
                        continue
                    st = de.stat(follow_symlinks=False)
                    real += st.st_blocks * 512
                    if real > MAX_ADAPTER_BYTES:
                        raise OverBound(f"{path}: more than {MAX_ADAPTER_BYTES >> 30} GiB on disk")
                    out.append((r, st.st_size, st.st_mtime_ns))
    except OSError:
        return None
    return tuple(sorted(out))


@dataclass(frozen=True)
class Seen:
    """One folder of DIR/ as one look at the disk found it (observe); the store's books are not touched."""
    name: str
    outside_link: bool = False      # DIR/name is a symlink resolving outside DIR/
    signature: Signature | None = None
    over: str | None = None         # the OverBound reason
    link: bool = False              # DIR/name is a symlink (inside DIR/): a change to its target names the target


def observe(root: Path, names=None) -> list[Seen] | None:
    """Look at DIR/ once: every non-hidden folder, with its signature (only for names the store can serve); with
    `names`, only those entries of DIR/ (the ones file events named; a name with no folder is simply not seen).
    Pure I/O, no shared state: the watcher runs it on a worker thread. None when DIR/ itself is unreadable."""
    try:
        if names is None:
            names = os.listdir(root)
        elif not os.path.isdir(root):
            return None
    except OSError:
        return None
    out = []
    for n in sorted(names):
        path = root / n
        if n.startswith(".") or not path.is_dir():    # temporaries (atomic_dir writes .name.tmp-*)
            continue
        if not NAME_RE.fullmatch(n):
            out.append(Seen(n))
            continue
        if path.is_symlink() and not _inside(path.resolve(), root.resolve()):
            out.append(Seen(n, outside_link=True))
            continue
        link = path.is_symlink()
        try:
            out.append(Seen(n, signature=folder_signature(path), link=link))
        except OverBound as e:
            out.append(Seen(n, over=str(e), link=link))
    return out


def marker_complete(sig: Signature) -> bool:
    """True when `.ready` exists and was written after (or with) every other file."""
    marker = [m for (p, _, m) in sig if p == READY_MARKER]
    return bool(marker) and all(m <= marker[0] for (p, _, m) in sig if p != READY_MARKER)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False
