"""Start-up without a cliff: the server answers as soon as the base is up, whatever DIR/ holds (issue 18, item 4).

    begin(swapper)           plan the first pass (every complete folder becomes pending) and run its jobs in the
                             background, `--load-parallel` at a time, printing progress every PROGRESS_S seconds
    settle(swapper, task)    wait until those jobs are done and no folder is still waiting to become stable, or
                             `--startup-wait` seconds, whichever is first; then the server starts answering

While jobs remain, a request for a pending folder waits for that folder's verdict (AdmissionMiddleware →
HotSwapper.wait_for, which moves it to the front); `/v1/models` lists only folders already validated and loaded.
"""
from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("hylorada_serve")
PROGRESS_S = 5.0                    # seconds between progress lines while the start-up backlog loads


async def begin(swapper) -> asyncio.Task:
    """Plan the first pass now (so no folder is unknown once serving starts) and load it in a background task.
    The task prints one line every PROGRESS_S seconds and one when it is done."""
    t0 = time.monotonic()
    jobs = await swapper.plan()
    last = [t0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_S and done < total:
            last[0] = now
            print(f"adapters: {done}/{total} folders validated ({now - t0:.0f} s)", flush=True)

    async def run() -> None:
        await swapper.run_jobs(jobs, progress)
        if len(jobs) > 0:
            rows = swapper.store.status()
            print(f"adapters: start-up validation done in {time.monotonic() - t0:.1f} s: "
                  f"{sum(r['status'] == 'ready' for r in rows)} serving, "
                  f"{sum(r['status'] == 'refused' for r in rows)} refused", flush=True)

    return asyncio.create_task(run())


async def settle(swapper, backlog: asyncio.Task, wait_s: float, poll_s: float) -> None:
    """Return once `backlog` is done and no folder waits to become stable, or after `wait_s` seconds. The watcher's
    own passes (already running) pick up the waiting folders; this only decides when serving begins."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        waiting = any(e.status == "waiting" for e in swapper.store.entries.values())
        if backlog.done() and not waiting:
            return
        await asyncio.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
