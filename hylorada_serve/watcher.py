"""The polling watcher: turns AdapterStore decisions into engine loads and frees.

One pass (`step`) = scan DIR/ once; for each removed folder, stop serving it; for each complete new or changed
folder, copy → validate → `engine.add_lora` → commit (a failure at any stage refuses that content and leaves
the serving version alone); then free retired versions no admitted request can still use
(`engine.remove_lora` + delete the published copy). Passes and admin actions are serialised by one lock, and
every pass is bounded (by the folder count and the store's MAX_FILES) — the loop itself runs until `stop` is set.
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Callable

from . import publish
from .store import AdapterStore, Version

log = logging.getLogger("hylorada_serve")
ENGINE_TIMEOUT_S = 120              # an engine that does not answer add_lora in this long refuses the adapter


class HotSwapper:
    """engine: anything with `async add_lora(request)` and `async remove_lora(uid)` (vLLM's AsyncLLM).
    make_request(engine_name, uid, path) builds the engine's request object (vLLM's LoRARequest)."""

    def __init__(self, store: AdapterStore, engine: Any, publish_root: str | Path,
                 make_request: Callable[[str, int, str], Any], base_config=None, max_rank: int | None = None,
                 on_event: Callable[[str, str], None] | None = None):
        self.store, self.engine = store, engine
        self.publish_root = Path(publish_root)
        self.make_request = make_request
        self.base_config, self.max_rank = base_config, max_rank
        self.on_event = on_event or (lambda name, event: None)
        self.lock = asyncio.Lock()
        self.load_seconds: dict[str, float] = {}        # name -> seconds of the last successful load

    # ---- one pass -------------------------------------------------------------------------------------------
    async def step(self) -> None:
        async with self.lock:
            to_load, gone = self.store.scan()
            for name, reason in self.store.new_refusals:     # names refused by the scan itself
                log.warning("adapter %s refused: %s", name, reason)
                self.on_event(name, "refused")
            self.store.new_refusals.clear()
            for name in gone:
                if self.store.remove(name) is not None:
                    log.info("adapter %s: folder removed; no longer served (running requests finish)", name)
                    self.on_event(name, "removed")
            for name in to_load:
                await self._load(name)
            await self._collect()

    async def load(self, name: str, force: bool = False) -> dict:
        """Admin load/reload of DIR/name (name checked by the caller). force: a new version even if unchanged."""
        async with self.lock:
            self.store.scan()
            e = self.store.entries.get(name)
            if e is None or not (self.store.root / name).is_dir():
                return {"name": name, "status": "missing", "reason": f"no folder '{name}' in the adapters folder"}
            if e.blocked:
                return self._status(name)
            if force or e.current is None or e.current.signature != e.seen_sig:
                e.refused_sig = None
                await self._load(name)
            await self._collect()
            return self._status(name)

    async def unload(self, name: str) -> dict:
        async with self.lock:
            if self.store.remove(name, status="unloaded") is not None:
                self.on_event(name, "unloaded")
            await self._collect()
            return self._status(name)

    def _status(self, name: str) -> dict:
        return next((s for s in self.store.status() if s["name"] == name), {"name": name, "status": "missing"})

    # ---- stages ---------------------------------------------------------------------------------------------
    async def _load(self, name: str) -> None:
        t0 = time.perf_counter()
        src = self.store.root / name
        number, uid, sig = self.store.begin_load(name)
        dst = self.publish_root / f"{name}-v{number}-{uid}"
        try:
            await asyncio.to_thread(publish.stage, src, dst, self.store.root, sig)
            info = await asyncio.to_thread(publish.check, dst, src, self.base_config, self.max_rank)
            version = Version(name=name, number=number, uid=uid, path=str(dst), signature=sig or (),
                              kind=info.kind, rank=info.rank, size_bytes=info.size_bytes, loaded_at=time.time())
            version = _replace(version, handle=self.make_request(version.engine_name, uid, str(dst)))
            try:
                await asyncio.wait_for(self.engine.add_lora(version.handle), timeout=ENGINE_TIMEOUT_S)
            except Exception as e:                       # vLLM's own checks (shapes, rank, unknown keys)
                why = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
                raise publish.AdapterRefused(f"{src}: the engine refused it: {why}") from None
        except publish.ChangedWhileCopying as e:
            e_ = self.store.entries[name]
            e_.status = "ready" if e_.current else "waiting"
            e_.reason = str(e)
            return
        except (publish.AdapterRefused, OSError) as e:
            publish.discard(dst)
            self.store.refuse(name, sig, str(e))
            self.on_event(name, "refused")
            log.warning("adapter %s refused: %s", name, e)
            return
        self.load_seconds[name] = time.perf_counter() - t0
        old = self.store.commit(_replace(version, load_seconds=self.load_seconds[name]))
        self.on_event(name, "loaded")
        log.info("adapter %s v%d loaded: kind=%s rank=%d size=%.1f KiB%s in %.0f ms", name, number, info.kind,
                 info.rank, info.size_bytes / 1024, f" (replaces v{old.number})" if old else "",
                 self.load_seconds[name] * 1e3)

    async def _collect(self) -> None:
        for v in self.store.collectable():
            try:
                await asyncio.wait_for(self.engine.remove_lora(v.uid), timeout=ENGINE_TIMEOUT_S)
            except Exception as e:                       # freeing is best effort; LRU eviction also frees
                log.debug("remove_lora(%d) failed: %s", v.uid, e)
            publish.discard(v.path)

    # ---- the loop -------------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, interval: float = 0.5) -> None:
        while not stop.is_set():
            try:
                await self.step()
            except Exception:                            # never let one bad pass end hot-swapping
                log.exception("adapter watcher pass failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except asyncio.TimeoutError:
                pass


def _replace(v: Version, **changes) -> Version:
    from dataclasses import replace
    return replace(v, **changes)
