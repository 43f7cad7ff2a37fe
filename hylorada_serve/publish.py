"""Copy an adapter folder out of DIR/ into a private, immutable published folder, then validate the copy.

vLLM reads the published copy, never the watched folder, so

  * what was validated is exactly what vLLM loads (a writer changing DIR/name afterwards changes nothing),
  * every version has its own path (prefix-cache keys include the path; DESIGN.md §6),
  * the engine can re-read a version after its CPU LRU evicted it, while requests admitted on it are running.

A private copy costs disk: N names are N copies. Two things bound that. A source file whose identity (device,
inode, size, mtime and ctime in ns: what the checked stamp trusts too) equals one already copied is hard-linked to
that private copy instead of copied again (`Copies`): names that share weights (links to one folder, aliases,
the benchmarks' weight sets) cost one copy, and private files are never written after they are made, so a link
is as immutable as a copy. And no copy is made that would leave less than `min_free` bytes free on the private
folder's disk: the folder is refused with the numbers (4,096 SmolLM2 names filled a 100 GB disk with 75 GB of
copies before this, and every later copy failed with ENOSPC). That refusal (`NoRoom`) is the one the watcher retries
with the same content: every NoRoom.RETRY_S seconds, until the disk has room.

Only the four files of the format (COPIED_FILES) are copied, and only after every one of them was sized: a file
whose real size (blocks on disk) is far below its apparent size (a sparse file) or a folder over MAX_ADAPTER_BYTES is
refused before a byte is written. Pickle files are never opened: a folder with no adapter_model.safetensors is
refused even if it has adapter_model.bin (vLLM would fall back to torch.load on it). Symlinks are followed only
when they resolve inside DIR/.

`check` is total: any exception while validating is a refusal naming the folder and the exception, never an
error that escapes into the watcher. With the base folder it bounds every LoRA delta by the base weight's norm
(hylorada.format.checks.check_magnitudes), the norms read once per process.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from hylorada.format import stamp
from hylorada.format.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, DYNAMIC, META
from hylorada_patches.loading import check_servable     # the engine patches' own pre-load checks (vLLM-free)

from .scan import MAX_ADAPTER_BYTES, NAME_RE, Signature, folder_signature

log = logging.getLogger("hylorada_serve")
COPIED_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, META, DYNAMIC)    # all the format uses; nothing else is copied
SPARSE_MIN_BYTES = 1 << 20          # a file this large with under half of it on disk is refused as sparse


class AdapterRefused(ValueError):
    """One line naming the file and the reason; the adapter is not served, everything else keeps serving."""


class NoRoom(AdapterRefused):
    """A refusal whose cause is outside the folder (its private copy does not fit on the disk): the same content is
    tried again every RETRY_S seconds, so freeing disk is enough (the check runs before any byte is copied)."""
    RETRY_S = 10.0


@dataclass(frozen=True)
class AdapterInfo:
    kind: str                       # lora | dora | hylorada
    rank: int
    size_bytes: int                 # tensor bytes
    dynamic_parts: tuple = ()


def identity(st: os.stat_result) -> tuple[int, ...]:
    """What says a file's bytes are the ones seen before: a write changes ctime (never settable), mtime or size."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class Copies:
    """The private copies made so far, by the identity of the source file each was copied from (thread-safe: the
    watcher stages folders in worker threads). `link` hard-links an existing copy; a copy that went away with its
    version (or any link failure: another filesystem, too many links) is forgotten and the caller copies."""
    PRUNE_AT = 1 << 16                              # entries; then those whose copy is gone are dropped

    def __init__(self) -> None:
        self._by_source: dict[tuple[int, ...], Path] = {}
        self._lock = threading.Lock()
        self.linked = 0                             # files linked instead of copied (what GET /health/details shows)

    def link(self, st: os.stat_result, dst: Path) -> bool:
        key = identity(st)
        with self._lock:
            have = self._by_source.get(key)
        if have is None:
            return False
        try:
            if os.stat(have).st_size != st.st_size:
                raise OSError("size differs")
            os.link(have, dst)
        except OSError:
            with self._lock:
                if self._by_source.get(key) == have:
                    del self._by_source[key]
            return False
        with self._lock:
            self.linked += 1
        return True

    def remember(self, st: os.stat_result, copy: Path) -> None:
        with self._lock:
            if len(self._by_source) >= self.PRUNE_AT:
                self._by_source = {k: p for k, p in self._by_source.items() if p.exists()}
            self._by_source[identity(st)] = copy


def stage(src: Path, dst: Path, root: Path, expect: Signature | None, copies: Copies | None = None,
          min_free: int = 0) -> None:
    """Copy the format's files of src (= DIR/name) to dst (a file `copies` already holds is hard-linked instead).
    Raises AdapterRefused (before anything is written when a file is sparse or the folder too large; before any
    byte is copied when the copies would leave under `min_free` bytes free on dst's disk), or ChangedWhileCopying
    if src moved under us."""
    root_r = root.resolve()
    src_r = src.resolve()
    if not _inside(src_r, root_r):
        raise AdapterRefused(f"{src}: resolves outside the adapters folder ({src_r})")
    plan, total = [], 0
    for name in COPIED_FILES:
        f = src / name
        if not f.is_symlink() and not f.exists():
            continue
        real = f.resolve()
        if f.is_symlink() and not _inside(real, root_r):
            raise AdapterRefused(f"{f}: symlink pointing outside the adapters folder")
        if not real.is_file():
            continue
        st = real.stat()
        on_disk = st.st_blocks * 512
        if st.st_size >= SPARSE_MIN_BYTES and on_disk < st.st_size // 2:
            raise AdapterRefused(f"{f}: sparse file ({st.st_size} bytes long, {on_disk} on disk); "
                                 "refused before copying")
        total += max(st.st_size, on_disk)
        if total > MAX_ADAPTER_BYTES:
            raise AdapterRefused(f"{src}: larger than {MAX_ADAPTER_BYTES >> 30} GiB; refused before copying")
        plan.append((real, name, st))
    dst.mkdir(parents=True)
    try:
        try:
            todo = [(real, name, st) for real, name, st in plan if copies is None or not copies.link(st, dst / name)]
            need = sum(st.st_size for _, _, st in todo)
            free = shutil.disk_usage(dst).free if need else 0
            if need and free - need < min_free:
                raise NoRoom(f"{src}: no room for its private copy: {need} bytes needed, {free} free on the "
                             f"disk of {dst.parent}, {min_free} kept free (--min-free-disk-mb); tried again every "
                             f"{NoRoom.RETRY_S:.0f} s, or at once on a change to the folder or "
                             "POST /v1/adapters/<name>/reload")
            for real, name, st in todo:
                shutil.copyfile(real, dst / name)
            changed = (expect is not None and folder_signature(src) != expect) or \
                any(identity(real.stat()) != identity(st) for real, _, st in todo)   # written while we copied
        except FileNotFoundError:                       # a file (or the folder) went away under us: not a refusal
            changed = True
        if changed:
            raise ChangedWhileCopying(f"{src}: changed while it was being copied; waiting until it is stable")
        if copies is not None:
            for _, name, st in todo:
                copies.remember(st, dst / name)
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)
        raise


class ChangedWhileCopying(RuntimeError):
    """The folder is still being written; not a refusal (it is retried once stable)."""


def check(path: Path, src: Path, base_config=None, max_rank: int | None = None,
          base_dir: str | None = None, stamp_key: bytes = b"") -> AdapterInfo:
    """Validate the published copy `path` of `src`: hylorada.format.load.load_served (names, shapes, rank, finite
    values, against the base; with `base_dir`, every ||B'A|| against the base weight's norm) and, given the base,
    the engine patches' check_servable. Any exception is an AdapterRefused. With `stamp_key` (the key the engine
    processes got in HYLORADA_CHECKED_KEY), a copy that passed gets a checked stamp (hylorada.format.stamp), so the
    engine's worker does not read and check its LoRA values a second time on every load.

    Messages name the source folder's files, not the private copy."""
    from hylorada.format.layout import AdapterError
    from hylorada.format.load import load_served

    def refuse(msg: str) -> AdapterRefused:
        return AdapterRefused(msg.replace(str(path), str(src)))

    try:
        if src.is_dir() and not any(src.iterdir()):
            raise refuse(f"{src}: empty folder (expected adapter_config.json + adapter_model.safetensors)")
        if not (path / "adapter_model.safetensors").is_file():
            raise refuse(f"{src / 'adapter_model.safetensors'}: missing (pickle files such as .bin are never loaded)")
        ad = load_served(path, base_config=base_config, max_rank=max_rank,
                         base_norms=base_norms(base_dir) if base_dir else None)
        if base_config is not None:
            check_servable(ad, base_config)        # parts the engine patches cannot apply; RoPE vs the engine
        if stamp_key:
            stamp.write_stamp(path, stamp_key, stamp.context(base_config, max_rank))
        return AdapterInfo(kind=ad.kind, rank=int(ad.rank), size_bytes=int(ad.size_bytes),
                           dynamic_parts=tuple(ad.dynamic_parts))
    except AdapterRefused:
        raise
    except AdapterError as e:
        raise refuse(str(e)) from None
    except Exception as e:                         # corrupt files, bad JSON types, a reader bug: still a refusal
        raise refuse(f"{src}: unreadable adapter ({type(e).__name__}: {str(e)[:300]})") from None


@functools.lru_cache(maxsize=4)
def base_norms(base_dir: str) -> dict[str, float] | None:
    """||W||_F per base linear (hylorada.format.base.base_weight_norms, read once per process and folder); None,
    with one warning, when the base's weights cannot be read (deltas are then bounded by an absolute bound)."""
    from hylorada.format.base import base_weight_norms
    try:
        return base_weight_norms(str(base_dir))
    except Exception as e:                          # noqa: BLE001 - a base we cannot read must not refuse every adapter
        log.warning("base weight norms unreadable in %s (%s: %s); adapter deltas bounded absolutely instead",
                    base_dir, type(e).__name__, e)
        return None


def longest_context(adapters_dir: Path, base_config) -> tuple[int, int]:
    """(the most positions any start-up adapter in DIR/ is meant for on this base — hylorada.method.rope.
    served_context, the base's own length when none asks for more —, how many ask for more than the base).
    A folder whose hylorada.json cannot be read or parsed counts for nothing (it is refused at load with the
    reason): no adapter content can stop start-up; launch.py bounds what the answer may make the engine hold."""
    from hylorada.format.load import read_json
    from hylorada.format.meta import ServedMeta
    from hylorada.method.rope import served_context

    base_len = int(base_config.max_position_embeddings)
    longest, longer = base_len, 0
    try:
        folders = sorted(p for p in adapters_dir.iterdir() if NAME_RE.fullmatch(p.name) and p.is_dir())
    except OSError:
        folders = []
    for d in folders:
        try:
            rs = ServedMeta.parse(read_json(d / META), d / META).rope_scaling if (d / META).is_file() else None
            n = served_context(rs, base_config)
        except Exception:                    # noqa: BLE001 - refused later, with the reason, like any bad adapter
            continue
        longest, longer = max(longest, n), longer + (n > base_len)
    return longest, longer


def discard(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _inside(path: Path, root: Path) -> bool:
    return path == root or str(path).startswith(str(root) + os.sep)
