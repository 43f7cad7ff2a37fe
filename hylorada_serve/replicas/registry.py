"""The one place that knows every live replica: a small asyncio actor (run as a named Ray actor by run.py; plain
Python, so tests drive it without Ray).

Serve routes each request to one replica and cannot address a given one, so what must reach all of them (/metrics,
GET /v1/replicas, the admin routes that change adapters) goes through here:

    replica:  register(tag, info) once, then loops next_command(tag, wait_s) -> command | None, and answers each
              command with answer(command_id, tag, result)
    ingress:  broadcast(command, timeout_s) -> {tag: result}: the command queued for every live replica, their
              results awaited together; a replica that does not answer in timeout_s gets {"status": 504, ...}

A replica is live while it is waiting in next_command or called it within STALE_S; a dead one (Ray replaced it
under a new tag) stops polling and is dropped after STALE_S.
"""
from __future__ import annotations

import asyncio
import itertools
import time

STALE_S = 10.0


class Registry:
    def __init__(self, stale_s: float = STALE_S):
        self.stale_s = stale_s
        self.queues: dict[str, asyncio.Queue] = {}
        self.info: dict[str, dict] = {}
        self.seen: dict[str, float] = {}
        self.waiting: dict[str, int] = {}
        self.pending: dict[tuple[int, str], asyncio.Future] = {}
        self.ids = itertools.count(1)

    def register(self, tag: str, info: dict) -> None:
        self.queues.setdefault(tag, asyncio.Queue())
        self.info[tag] = dict(info)
        self.seen[tag] = time.monotonic()

    def live(self) -> list[str]:
        now = time.monotonic()
        for tag in [t for t in self.queues if not self.waiting.get(t) and now - self.seen[t] > self.stale_s]:
            self.forget(tag)
        return sorted(self.queues)

    def forget(self, tag: str) -> None:
        self.queues.pop(tag, None)
        self.info.pop(tag, None)
        self.seen.pop(tag, None)
        self.waiting.pop(tag, None)
        for (cid, t), fut in list(self.pending.items()):
            if t == tag and not fut.done():
                fut.set_result({"status": 504, "error": f"replica {tag} went away"})

    async def next_command(self, tag: str, wait_s: float = 5.0):
        if tag not in self.queues:
            return {"kind": "register"}              # the registry restarted or dropped it: register again
        self.waiting[tag] = self.waiting.get(tag, 0) + 1
        try:
            return await asyncio.wait_for(self.queues[tag].get(), wait_s)
        except asyncio.TimeoutError:
            return None
        finally:
            self.waiting[tag] -= 1
            self.seen[tag] = time.monotonic()

    def answer(self, command_id: int, tag: str, result: dict) -> None:
        fut = self.pending.pop((command_id, tag), None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    async def broadcast(self, command: dict, timeout_s: float = 30.0) -> dict[str, dict]:
        cid = next(self.ids)
        loop = asyncio.get_running_loop()
        futs = {}
        for tag in self.live():
            futs[tag] = self.pending[(cid, tag)] = loop.create_future()
            self.queues[tag].put_nowait({**command, "id": cid})
        if futs:
            await asyncio.wait(list(futs.values()), timeout=timeout_s)
        out = {}
        for tag, fut in futs.items():
            self.pending.pop((cid, tag), None)
            out[tag] = fut.result() if fut.done() else {"status": 504, "error": f"replica {tag} did not answer "
                                                                               f"in {timeout_s:g} s"}
        return out
