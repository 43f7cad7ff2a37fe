"""gc_heap.collect_after_freeze: after a vLLM-style freeze of a big start-up heap, full collections run again.

CPython state is process-wide and gc.freeze() cannot be undone cleanly, so the freeze cases run in a child
process: a 1M-object start-up heap is collected and frozen as vLLM's lifespan does, then connection-like objects
live a while in a window (so generations 0/1 promote them) and die in reference cycles. Without the fix no full
collection runs in 40,000 connections (the trigger still counts the frozen heap); with it, full collections
run (at most one per 10 generation-1 collections, CPython's own rate) and far fewer dead connections stay. No engine.
The child pins gc thresholds to CPython's defaults, so the counts depend on CPython's rule, not on the machine
(no timing: the 40,000 connections are made in one loop), on the CPython 3.11 the project runs.
"""
from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hylorada_serve.gc_heap import collect_after_freeze

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import asyncio, gc, json, sys
    from collections import deque
    from hylorada_serve.gc_heap import collect_after_freeze

    class Conn:                       # a transport <-> protocol cycle with a buffer
        def __init__(self):
            self.peer = Peer(self)
            self.buf = bytearray(512)

    class Peer:
        def __init__(self, conn):
            self.conn, self.state = conn, {"headers": [1, 2, 3]}

    async def main(fixed):
        gc.set_threshold(700, 10, 10)     # CPython's defaults, pinned: the counts below follow from them
        heap = [[i] for i in range(1_000_000)]                       # the server's start-up heap
        stop = asyncio.Event()
        task = asyncio.create_task(collect_after_freeze(stop, poll_s=0.01, limit_s=30)) if fixed else None
        await asyncio.sleep(0.05)
        gc.collect(0); gc.collect(1); gc.collect(2); gc.freeze()      # vllm freeze_gc_heap()
        ran = await task if task else False
        full = [0]
        gc.callbacks.append(lambda phase, info: full.__setitem__(
            0, full[0] + (phase == "stop" and info["generation"] == 2)))
        window = deque(maxlen=2000)                                   # connections live a while, then close
        for _ in range(40_000):
            window.append(Conn())
        alive = sum(1 for o in gc.get_objects() if type(o) is Conn) - len(window)
        print(json.dumps({"ran": ran, "full_collections": full[0], "dead_conns_alive": alive, "heap": len(heap)}))

    asyncio.run(main(sys.argv[1] == "fixed"))
""")


def run_child(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def children() -> dict[str, dict]:
    return {mode: run_child(mode) for mode in ("stock", "fixed")}


def test_without_it_a_frozen_heap_blocks_full_collections(children):
    """The bug, reproduced: else the fixed case below would prove nothing."""
    r = children["stock"]
    assert r["full_collections"] == 0 and r["dead_conns_alive"] > 30_000, r


def test_with_it_full_collections_run_and_dead_cycles_are_freed(children):
    r, stock = children["fixed"], children["stock"]
    assert r["ran"] and r["full_collections"] >= 1, r
    assert r["dead_conns_alive"] < 0.6 * stock["dead_conns_alive"], children


def test_gives_up_without_a_freeze_or_when_stopped():
    async def go():
        stop = asyncio.Event()
        assert await collect_after_freeze(stop, poll_s=0.01, limit_s=0.05) is False
        stop.set()
        assert await collect_after_freeze(stop, poll_s=0.01, limit_s=30) is False

    if gc.get_freeze_count():
        pytest.skip("this test process has a frozen heap")
    asyncio.run(go())
