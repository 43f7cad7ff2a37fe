"""The watcher: turns AdapterStore decisions into engine loads and frees, on file events and on a polling timer.

One pass (`step`) = `plan` (look at DIR/ once, `scan.observe` on a worker thread, all of it or only the entries file
events named; for each removed folder, stop
serving it; mark each complete new or changed folder loading) → `run_jobs` (copy → validate on worker threads →
`engine.add_lora` → commit, `parallel` folders at a time) → free retired versions no admitted request can still use
(`engine.remove_lora` + delete the published copy).

Start-up (launch.py) plans the first pass before serving and runs its jobs in the background: the server answers as
soon as the base is up. While a folder's job is queued or running it is `pending`; a request for it waits for its
verdict (`wait_for`, which also moves it to the front of the queue), so no request skips a folder that is being
validated and none is served by unvalidated weights.

Totality: whatever goes wrong with one folder (a refusal, an OSError, any exception from the reader, the engine
refusing it) refuses that content with the reason and deletes its copy; the folder never stays `loading`, later
content is picked up and removal works. The event loop never walks, parses or copies: all of that runs on worker
threads, each bounded (the store's scan bounds; publish's size cap). `lock` serialises the store/engine steps
(scan + removals, add_lora + commit, unload, frees); it is never held while a folder is copied or validated.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from . import publish
from .scan import observe
from .store import AdapterStore, Version

log = logging.getLogger("hylorada_serve")
ENGINE_TIMEOUT_S = 120              # an engine that does not answer add_lora in this long refuses the adapter
EVENT_DEBOUNCE_MS = 10              # file events within this many ms wake one pass
EVENT_STEP_MS = 5                   # watchfiles' check interval: a burst ends after one step without new events
EVENT_RETRY_S = 2.0                 # DIR/ not watchable (missing, replaced): try events again after this long


def shown(name: str) -> str:
    """A folder name as a log line shows it: control characters escaped (a name with a newline is one line)."""
    return name if name.isprintable() else name.encode("unicode_escape").decode("ascii")


class HotSwapper:
    """engine: anything with `async add_lora(request)` and `async remove_lora(uid)` (vLLM's AsyncLLM).
    make_request(engine_name, uid, path) builds the engine's request object (vLLM's LoRARequest).
    base_dir: the base model folder; its weight norms bound every adapter's delta (publish.check).
    parallel: folders copied and validated at once by one `run_jobs` (the engine's add_lora is one at a time).
    stamp_key: the engine's HYLORADA_CHECKED_KEY; each copy that passes is stamped (publish.check)."""

    def __init__(self, store: AdapterStore, engine: Any, publish_root: str | Path,
                 make_request: Callable[[str, int, str], Any], base_config=None, max_rank: int | None = None,
                 on_event: Callable[[str, str], None] | None = None, base_dir: str | None = None,
                 parallel: int = 4, stamp_key: bytes = b"", min_free_disk: int = 0):
        self.store, self.engine = store, engine
        self.publish_root = Path(publish_root)
        self.make_request = make_request
        self.base_config, self.max_rank, self.base_dir = base_config, max_rank, base_dir
        self.on_event = on_event or (lambda name, event: None)
        self.parallel, self.stamp_key = parallel, stamp_key
        self.copies, self.min_free_disk = publish.Copies(), min_free_disk   # private copies: linked when shared
        self.lock = asyncio.Lock()
        self.load_seconds: dict[str, float] = {}        # name -> seconds of the last successful load
        self._queued: dict[str, None] = {}               # names planned and not yet decided (queued or loading)
        self._wanted: dict[str, None] = {}               # of those, the ones a waiting request asked for
        self._decided: dict[str, asyncio.Event] = {}     # name -> set when its queued job ends (wait_for)
        self.events_live = False                         # DIR/'s file events are being watched (run, _listen)
        self.passes = 0                                  # passes run by `run` (GET /health/details)
        self.partial_passes = 0                          # of those, the ones that looked only at named folders
        self._dirty: set[str] = set()                    # DIR/ entries file events named since the last pass
        self._dirty_all = False                          # an event outside any one entry: the next pass is full
        self._links: set[str] = set()                    # entries of DIR/ that are symlinks: in every event pass

    # ---- one pass -------------------------------------------------------------------------------------------
    async def step(self, names=None) -> None:
        await self.run_jobs(await self.plan(names))
        await self._collect()

    async def plan(self, names=None) -> list[tuple]:
        """Look at DIR/ once and apply it: removed folders stop serving now; each complete new or changed folder is
        marked loading (pending from here on) and returned as a job for `run_jobs`. names: look only at these
        entries of DIR/ (the ones file events named), else at all of it."""
        if names is not None:                            # a change inside DIR/a names only 'a', not a link to it
            names = sorted(set(names) | self._links)
        seen = await asyncio.to_thread(observe, self.store.root, names)
        if seen is not None:
            links = {s.name for s in seen if s.link}
            self._links = links if names is None else (self._links - set(names)) | links
        async with self.lock:
            to_load, gone = self.store.apply(seen, names)
            self._log_scan_refusals()
            for name in gone:
                if self.store.remove(name) is not None:
                    log.info("adapter %s: folder removed; no longer served (running requests finish)", shown(name))
                    self.on_event(name, "removed")
            return [self._begin(name) for name in to_load]

    async def run_jobs(self, jobs: list[tuple], progress: Callable[[int, int], None] | None = None) -> None:
        """Load `jobs` (from `plan`), `parallel` at a time; a name a request waits for goes next. Total: a job that
        never started (cancelled) is abandoned, so no folder stays loading. progress(done, total) after each."""
        queue = {job[0]: job for job in jobs}
        done = [0]

        async def worker():
            while queue:
                name = next((n for n in self._wanted if n in queue), None) or next(iter(queue))
                job = queue.pop(name)
                await self._load(*job)
                done[0] += 1
                if progress is not None:
                    progress(done[0], len(jobs))
        try:
            await asyncio.gather(*(worker() for _ in range(min(self.parallel, len(queue)))))
        finally:
            for name in list(queue):                     # cancelled before these started
                self.store.abandon(name)
                self._settle(name)

    # ---- requests waiting for a verdict ---------------------------------------------------------------------
    @property
    def backlog(self) -> int:
        """Folders planned and not yet decided."""
        return len(self._queued)

    def pending(self, name: str) -> bool:
        """True while `name` has no serving version and a job for it is queued or running."""
        e = self.store.entries.get(name)
        return name in self._queued and e is not None and e.current is None

    async def wait_for(self, name: str, timeout: float) -> bool:
        """Wait (at most `timeout` s) until `name` is no longer pending; its job goes next. False on timeout."""
        if not self.pending(name):
            return True
        self._wanted[name] = None
        ev = self._decided.setdefault(name, asyncio.Event())
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return not self.pending(name)

    def _settle(self, name: str) -> None:
        self._queued.pop(name, None)
        self._wanted.pop(name, None)
        ev = self._decided.pop(name, None)
        if ev is not None:
            ev.set()

    async def load(self, name: str, force: bool = False) -> dict:
        """Admin load/reload of DIR/name (name checked by the caller). force: a new version even if unchanged.
        A load this call started and that was refused answers status 'refused' with the reason (a version
        already serving keeps serving, as GET /v1/adapters shows)."""
        seen = await asyncio.to_thread(observe, self.store.root)
        async with self.lock:
            self.store.apply(seen)
            self._log_scan_refusals()
            e = self.store.entries.get(name)
            if e is None or name not in {s.name for s in seen or ()}:
                return {"name": name, "status": "missing", "reason": f"no folder '{name}' in the adapters folder"}
            if e.blocked or e.status == "loading":
                return self._status(name)
            over = next((s.over for s in seen if s.name == name and s.over), None)
            if over is not None:
                return {**self._status(name), "status": "refused", "reason": over}
            job = None
            if force or e.current is None or e.current.signature != e.seen_sig:
                e.refused_sig = None
                job = self._begin(name)
        refused = await self._load(*job) if job else None
        await self._collect()
        st = self._status(name)
        return {**st, "status": "refused", "reason": refused} if refused else st

    async def unload(self, name: str) -> dict:
        async with self.lock:
            if self.store.remove(name, status="unloaded") is not None:
                self.on_event(name, "unloaded")
        await self._collect()
        return self._status(name)

    def _status(self, name: str) -> dict:
        return next((s for s in self.store.status() if s["name"] == name), {"name": name, "status": "missing"})

    def _log_scan_refusals(self) -> None:
        for name, reason in self.store.new_refusals:     # names or folders refused by the scan itself
            log.warning("adapter %s refused: %s", shown(name), reason)
            self.on_event(name, "refused")
        self.store.new_refusals.clear()

    # ---- stages ---------------------------------------------------------------------------------------------
    def _begin(self, name: str) -> tuple[str, int, int, Any]:
        number, uid, sig = self.store.begin_load(name)
        self._queued[name] = None
        return name, number, uid, sig

    def _stage_and_check(self, src: Path, dst: Path, sig) -> publish.AdapterInfo:
        """Copy then validate (worker thread)."""
        publish.stage(src, dst, self.store.root, sig, self.copies, self.min_free_disk)
        return publish.check(dst, src, self.base_config, self.max_rank, base_dir=self.base_dir,
                             stamp_key=self.stamp_key)

    async def _load(self, name: str, number: int, uid: int, sig) -> str | None:
        """Copy → validate → add_lora → commit one version. Returns the refusal reason, or None. Total: the
        entry never stays 'loading' and the copy is deleted unless it was committed."""
        t0 = time.perf_counter()
        src = self.store.root / name
        dst = self.publish_root / f"{name}-v{number}-{uid}"
        committed = False
        try:
            info = await asyncio.to_thread(self._stage_and_check, src, dst, sig)   # one thread hop: hot-swap latency
            version = Version(name=name, number=number, uid=uid, path=str(dst), signature=sig or (),
                              kind=info.kind, rank=info.rank, size_bytes=info.size_bytes, loaded_at=time.time())
            version = _replace(version, handle=self.make_request(version.engine_name, uid, str(dst)))
            async with self.lock:
                e = self.store.entries.get(name)
                if e is None or e.status != "loading" or e.loading_uid != uid:
                    return None                          # unloaded or superseded while it was copied
                try:
                    await asyncio.wait_for(self.engine.add_lora(version.handle), timeout=ENGINE_TIMEOUT_S)
                except Exception as e:                   # vLLM's own checks (shapes, rank, unknown keys)
                    why = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
                    raise publish.AdapterRefused(f"{src}: the engine refused it: {why}") from None
                self.load_seconds[name] = time.perf_counter() - t0
                old = self.store.commit(_replace(version, load_seconds=self.load_seconds[name]))
                committed = True
        except publish.ChangedWhileCopying as e:
            self.store.abandon(name, str(e))
            return None
        except Exception as e:                           # anything at all: this content is refused, with the reason
            reason = str(e) if isinstance(e, (publish.AdapterRefused, OSError)) else \
                f"{src}: could not be validated ({type(e).__name__}: {str(e)[:300]})"
            if self.store.entries.get(name) is not None and self.store.entries[name].status == "loading":
                retry = publish.NoRoom.RETRY_S if isinstance(e, publish.NoRoom) else None
                if self.store.refuse(name, sig, reason, retry_s=retry):
                    self.on_event(name, "refused")
                    log.warning("adapter %s refused: %s", shown(name), reason)
                else:                                    # the same content retried, still no room: said already
                    log.debug("adapter %s still refused: %s", shown(name), reason)
            return reason
        finally:
            if not committed:
                self.store.abandon(name)                 # cancelled or superseded: never left 'loading'
            self._settle(name)                           # decided: a request waiting for it goes on now
            if not committed:
                await asyncio.shield(asyncio.to_thread(publish.discard, dst))
        self.on_event(name, "loaded")
        log.info("adapter %s v%d loaded: kind=%s rank=%d size=%.1f KiB%s in %.0f ms", shown(name), number, info.kind,
                 info.rank, info.size_bytes / 1024, f" (replaces v{old.number})" if old else "",
                 self.load_seconds[name] * 1e3)
        return None

    async def _collect(self) -> None:
        async with self.lock:
            for v in self.store.collectable():
                try:
                    await asyncio.wait_for(self.engine.remove_lora(v.uid), timeout=ENGINE_TIMEOUT_S)
                except Exception as e:                   # freeing is best effort; LRU eviction also frees
                    log.debug("remove_lora(%d) failed: %s", v.uid, e)
                await asyncio.to_thread(publish.discard, v.path)

    # ---- the loop -------------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, interval: float = 0.5, events: bool = False,
                  rescan: float = 5.0) -> None:
        """Passes until `stop`. With `events`, one as soon as DIR/ reports a change (watchfiles: inotify on Linux),
        looking only at the entries of DIR/ the events named, so a folder published with a `.ready` marker is
        picked up at once however many others DIR/ holds. The timer's passes scan all of DIR/: every `interval`
        seconds while events are off or not (yet) working, and while some folder waits on time (the stable rule, a
        retry: store.waiting_on_time); otherwise every `rescan` seconds, the safety net for changes that send no
        event (another NFS client's writes). A full scan of 4,096 folders costs ~0.12 s of CPU: every 0.5 s that was
        a quarter of a core on a machine with nothing changing, and every hot-swap waited for one."""
        wake = asyncio.Event()
        self.events_live = False
        listener = asyncio.create_task(self._listen(stop, wake)) if events else None
        full = True                                      # the first pass, and every pass the timer starts
        try:
            while not stop.is_set():
                wake.clear()                             # a change during the pass wakes the next one at once
                names = None if full or self._dirty_all else sorted(self._dirty)
                self._dirty, self._dirty_all = set(), False
                try:
                    await self.step(names)
                    self.passes += 1
                    self.partial_passes += names is not None
                except Exception:                        # never let one bad pass end hot-swapping
                    log.exception("adapter watcher pass failed")
                    self._dirty_all = True
                quiet = self.events_live and not self.store.waiting_on_time()
                full = not await _first(stop, wake, rescan if quiet else interval)
        finally:
            if listener is not None:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)

    def _note(self, changes) -> None:
        """Record the DIR/ entries that watchfiles' changes {(Change, path)} lie in, for the next pass; a change to
        DIR/ itself or outside it (a symlinked DIR/ reports its target's paths) makes the next pass full."""
        root = os.path.abspath(self.store.root)
        for _, path in changes:
            name = _entry(path, root)
            if name is None:
                self._dirty_all = True
            else:
                self._dirty.add(name)

    async def _listen(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        """Set `wake` on file events under DIR/ (grouped over EVENT_DEBOUNCE_MS). DIR/ missing, replaced or not
        watchable: retried every EVENT_RETRY_S; the polling pass keeps going meanwhile."""
        from watchfiles import awatch
        while not stop.is_set():
            try:
                watched = _inode(self.store.root)       # a replaced DIR/ sends no event: checked on each timeout
                async for changes in awatch(self.store.root, stop_event=stop, debounce=EVENT_DEBOUNCE_MS,
                                            step=EVENT_STEP_MS,
                                            recursive=True, yield_on_timeout=True,
                                            rust_timeout=int(EVENT_RETRY_S * 1000)):
                    if not self.events_live:             # watching from here on: one pass for what came before
                        self.events_live, self._dirty_all = True, True
                        wake.set()
                    if changes:
                        self._note(changes)
                        wake.set()
                    if _inode(self.store.root) != watched:
                        self._dirty_all = True
                        wake.set()
                        break
            except Exception as e:
                log.debug("adapter folder events unavailable (%s); polling only for now", e)
            self.events_live = False                     # back to polling every interval until watching again
            await _first(stop, asyncio.Event(), EVENT_RETRY_S)


def _entry(path: str, root: str) -> str | None:
    """The entry of DIR/ (`root`, absolute) a changed path lies in; None for DIR/ itself or a path outside it."""
    rel = os.path.relpath(os.path.abspath(path), root)
    if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return None
    return rel.split(os.sep, 1)[0]


def _inode(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


async def _first(stop: asyncio.Event, wake: asyncio.Event, timeout: float) -> bool:
    """Return when `stop` or `wake` is set, or after `timeout` seconds: True when `wake` was set."""
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    return wake.is_set()


def _replace(v: Version, **changes) -> Version:
    from dataclasses import replace
    return replace(v, **changes)
