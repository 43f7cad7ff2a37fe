"""hylorada_serve/replicas/registry.py, driven without Ray: broadcasts reach every live replica, a silent one is
a 504 and not a hang, a dead one is dropped."""
from __future__ import annotations

import asyncio
import time

from hylorada_serve.replicas.registry import Registry


async def replica(reg: Registry, tag: str, stop: asyncio.Event, answer=True):
    reg.register(tag, {"replica": tag})
    while not stop.is_set():
        cmd = await reg.next_command(tag, 0.05)
        if cmd and answer:
            reg.answer(cmd["id"], tag, {"status": 200, "body": f"{tag}:{cmd['path']}"})


def test_broadcast_reaches_every_replica_and_a_silent_one_times_out():
    async def main():
        reg, stop = Registry(stale_s=5), asyncio.Event()
        tasks = [asyncio.create_task(replica(reg, t, stop, answer=t != "r3")) for t in ("r1", "r2", "r3")]
        await asyncio.sleep(0.01)
        t0 = time.monotonic()
        got = await reg.broadcast({"kind": "http", "path": "/metrics"}, timeout_s=0.3)
        took = time.monotonic() - t0
        stop.set()
        await asyncio.gather(*tasks)
        return got, took, reg.pending
    got, took, pending = asyncio.run(main())
    assert got["r1"] == {"status": 200, "body": "r1:/metrics"} and got["r2"]["body"] == "r2:/metrics"
    assert got["r3"]["status"] == 504 and "did not answer" in got["r3"]["error"]
    assert 0.3 <= took < 2 and pending == {}


def test_a_replica_that_stops_polling_is_dropped_and_an_unknown_one_told_to_register():
    async def main():
        reg = Registry(stale_s=0.1)
        reg.register("dead", {})
        await asyncio.sleep(0.15)
        live = reg.live()
        told = await reg.next_command("stranger", 0.01)
        return live, told, await reg.broadcast({"kind": "stats"}, 0.1)
    live, told, got = asyncio.run(main())
    assert live == [] and told == {"kind": "register"} and got == {}


def test_a_replica_forgotten_mid_broadcast_answers_504_at_once():
    async def main():
        reg = Registry(stale_s=5)
        reg.register("r1", {})
        b = asyncio.create_task(reg.broadcast({"kind": "stats"}, timeout_s=30))
        await asyncio.sleep(0.01)
        reg.forget("r1")
        return await asyncio.wait_for(b, 1)
    got = asyncio.run(main())
    assert got["r1"]["status"] == 504 and "went away" in got["r1"]["error"]
