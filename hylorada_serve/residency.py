"""Where each served adapter lives — a LoRA slot, the engine's CPU cache, or only its validated copy on disk — and
its bytes and engine loads (issue 18, item 2), from the worker RPC `hylorada_lora_residency`
(hylorada_patches/residency.py) through vLLM's public `AsyncLLM.collective_rpc`.

    rows(store rows, residency)  GET /v1/adapters: each serving row gains `where` ("slot" | "host" | "disk"),
                                 `host_bytes` (its tensors in the CPU cache, else null), `engine_loads`
                                 (reads from disk; each one after the first is a cache miss after an eviction)
                                 and `stamped_loads` (of those, the ones the publish check's stamp vouched for)
    publish(residency, store)    /metrics: hylorada_adapters_resident{where}, hylorada_adapters_cache_bytes,
                                 hylorada_adapter_engine_loads_total{adapter}; `watch` refreshes them every
                                 REFRESH_S seconds
"""
from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("hylorada_serve")
REFRESH_S = 5.0
RPC_TIMEOUT_S = 10.0


async def fetch(engine) -> dict | None:
    """The first worker's residency (every tensor-parallel worker holds the same adapters), or None when the engine
    cannot answer (dead, stopped, or a build without the RPC). vLLM's `timeout` bounds the workers; the client's own
    wait is bounded here too: once the engine core has exited (shutdown) its answer never comes (measured: the
    server's SIGTERM exit hung on this call until SIGKILL)."""
    try:
        out = await asyncio.wait_for(engine.collective_rpc("hylorada_lora_residency", timeout=RPC_TIMEOUT_S),
                                     RPC_TIMEOUT_S + 2)
    except Exception as e:                      # noqa: BLE001 - a status page must not fail with the engine
        log.debug("hylorada_lora_residency failed: %s", e)
        return None
    if not out or not isinstance(out[0], dict):
        return None
    res = out[0]
    return {"slots": set(res["slots"]), "host": {int(k): int(v) for k, v in res["host"].items()},
            "loads": {int(k): int(v) for k, v in res["loads"].items()},
            "stamped": {int(k): int(v) for k, v in res.get("stamped_loads", {}).items()}, "capacity": res["capacity"]}


def where(uid: int | None, res: dict) -> str | None:
    if uid is None:
        return None
    return "slot" if uid in res["slots"] else "host" if uid in res["host"] else "disk"


def rows(status: list[dict], res: dict | None) -> list[dict]:
    """Store status rows with `where`, `host_bytes`, `engine_loads` and `stamped_loads` (of those, the loads whose
    values the publish check's stamp vouched for) — null without a serving version or an answer from the engine."""
    if res is None:
        return [{**r, "where": None, "host_bytes": None, "engine_loads": None, "stamped_loads": None} for r in status]
    return [{**r, "where": where(r["uid"], res), "host_bytes": res["host"].get(r["uid"]) if r["uid"] else None,
             "engine_loads": res["loads"].get(r["uid"], 0) if r["uid"] else None,
             "stamped_loads": res["stamped"].get(r["uid"], 0) if r["uid"] else None} for r in status]


class Published:
    """The residency metrics, from successive answers: loads are counted as increases per adapter version."""

    def __init__(self):
        self._seen: dict[int, int] = {}          # uid -> loads already counted

    def publish(self, res: dict | None, serving: dict) -> None:
        from . import metrics
        if res is None:
            return
        counts = {"slot": 0, "host": 0, "disk": 0}
        live = set()
        for name, v in serving.items():
            counts[where(v.uid, res)] += 1
            live.add(v.uid)
            new = res["loads"].get(v.uid, 0) - self._seen.get(v.uid, 0)
            if new > 0:
                metrics.engine_loads(name, new)
                self._seen[v.uid] = res["loads"][v.uid]
        self._seen = {u: n for u, n in self._seen.items() if u in live}
        for w, n in counts.items():
            metrics.RESIDENT.labels(w).set(n)
        metrics.CACHE_BYTES.set(sum(res["host"].values()))

    async def watch(self, engine, store, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.publish(await fetch(engine), store.serving())
            try:
                await asyncio.wait_for(stop.wait(), REFRESH_S)
            except asyncio.TimeoutError:
                pass
