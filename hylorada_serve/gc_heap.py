"""One full garbage collection after vLLM freezes the API server's start-up heap, so closed connections get freed.

vLLM's app lifespan (vllm/entrypoints/launchers/utils/server_utils.py) calls `freeze_gc_heap()`: gc.collect(2), then
gc.freeze(). CPython 3.11 runs a full, generation-2 collection only once the objects promoted into generation 2
since the last full collection exceed a quarter of `long_lived_total`, the survivors of that last collection.
freeze() moves the heap to the permanent generation but leaves `long_lived_total` at the whole start-up heap, so the
first full collection waits until a quarter of that many objects has been promoted. Meanwhile every connection and
request object that lived long enough to be promoted (a keep-alive connection lives seconds; generations 0 and 1
run every few milliseconds under load) and then died in a reference cycle (transport <-> protocol, request cycle
<-> its task) stays in memory. Measured in a 60-min soak: +46 transports and +1,500 gc objects a minute in the API
server for at least the first 14 minutes, until that first full collection (docs/reliability.md, "Soak").

One gc.collect() after the freeze sets `long_lived_total` to the live, unfrozen heap, so full collections run at the
usual rate from then on. Frozen objects are not traversed, so that collection takes milliseconds.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger("hylorada_serve")


async def collect_after_freeze(stop: asyncio.Event, poll_s: float = 0.5, limit_s: float = 600.0) -> bool:
    """Wait until the heap is frozen (gc.get_freeze_count() > 0), at most `limit_s` or until `stop`, then run
    one full collection. Returns True when it ran."""
    deadline = time.monotonic() + limit_s
    while gc.get_freeze_count() == 0:
        if stop.is_set() or time.monotonic() >= deadline:
            return False
        try:
            await asyncio.wait_for(stop.wait(), timeout=poll_s)
        except asyncio.TimeoutError:
            pass
    t0 = time.perf_counter()
    found = gc.collect()
    log.info("gc: one full collection after the start-up heap was frozen (%d frozen objects, %d unreachable, %.1f ms)",
             gc.get_freeze_count(), found, 1e3 * (time.perf_counter() - t0))
    return True
