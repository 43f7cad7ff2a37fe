"""Start-up without a cliff (hylorada_serve/startup.py, watcher.run_jobs / pending / wait_for; no vLLM: a fake
engine, publish.check stubbed where only the scheduling is under test):

  * a pass's folders are copied and validated `parallel` at a time, never more;
  * a request waiting for a pending folder moves it to the front of the queue, and is released by its verdict
    (served, or refused: then no longer pending, so vLLM answers it as it answers any unknown name);
  * a backlog cancelled half way leaves no folder `loading` and nothing pending;
  * `startup.settle` returns at once with --startup-wait 0 while the backlog goes on, and waits for a small backlog;
  * the start-up report lists at most MAX_LINES folders, those not serving first, and says how many are pending.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from hylorada_serve import publish, startup
from hylorada_serve.report import MAX_LINES, banner, report_adapters

from .test_store import write
from .test_store_hardening import swapper


def slow_check(delay: float, live: list, peak: list, fail: set = frozenset()):
    """publish.check stand-in: sleeps `delay` on the worker thread, records how many run at once."""
    lock = threading.Lock()

    def check(path, src, cfg, rank, **kw):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        try:
            time.sleep(delay)
            if src.name in fail:
                raise publish.AdapterRefused(f"{src}: refused for the test")
            return publish.AdapterInfo("lora", 8, 100)
        finally:
            with lock:
                live[0] -= 1
    return check


def folders(root, n: int) -> list[str]:
    names = [f"a{i:03d}" for i in range(n)]
    for name in names:
        write(root / name, name.encode(), marker=False)
    return names


def backlog(tmp_path, monkeypatch, n: int, delay: float, parallel: int, fail: set = frozenset()):
    """A swapper over `n` folders whose validation (publish.check) takes `delay` s; (store, sw, engine, root, names,
    peak) with peak[0] the most validations seen at once."""
    store, sw, engine, root, _ = swapper(tmp_path, parallel=parallel)
    names = folders(root, n)
    live, peak = [0], [0]
    monkeypatch.setattr(publish, "check", slow_check(delay, live, peak, fail))
    return store, sw, engine, root, names, peak


def test_a_pass_validates_parallel_folders_at_once_and_never_more(tmp_path, monkeypatch):
    store, sw, engine, root, names, peak = backlog(tmp_path, monkeypatch, 12, 0.05, 3)
    asyncio.run(sw.step())
    assert sorted(store.serving()) == names and peak[0] == 3
    assert sw.backlog == 0 and not any(sw.pending(n) for n in names)


def test_a_waiting_request_moves_its_folder_to_the_front_and_is_released_by_the_verdict(tmp_path, monkeypatch):
    store, sw, engine, root, names, peak = backlog(tmp_path, monkeypatch, 20, 0.02, 1, fail={"a018"})

    async def go():
        jobs = await sw.plan()
        assert sw.backlog == 20 and all(sw.pending(n) for n in names)
        assert not sw.pending("unknown") and await sw.wait_for("unknown", 1.0)
        task = asyncio.create_task(sw.run_jobs(jobs))
        await asyncio.sleep(0)                                 # the one worker has taken a000
        t0 = time.monotonic()
        served = await sw.wait_for("a019", 10.0)
        waited = time.monotonic() - t0
        loaded_before = [req[0] for req in engine.added]
        refused = await sw.wait_for("a018", 10.0)              # decided (refused): released, no longer pending
        await task
        return served, waited, loaded_before, refused

    served, waited, before, refused = asyncio.run(go())
    assert served and before[-1] == "a019@v1" and len(before) <= 3, before   # a000 (in flight), then a019
    assert refused and not sw.pending("a018") and "a018" not in store.serving()
    assert store.entries["a018"].status == "refused" and "refused for the test" in store.entries["a018"].reason
    assert sorted(store.serving()) == [n for n in names if n != "a018"] and sw.backlog == 0
    assert waited < 10.0


def test_a_cancelled_backlog_leaves_nothing_loading_or_pending(tmp_path, monkeypatch):
    store, sw, engine, root, names, peak = backlog(tmp_path, monkeypatch, 10, 0.05, 2)

    async def go():
        task = asyncio.create_task(sw.run_jobs(await sw.plan()))
        await asyncio.sleep(0.08)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sw.step()                                        # the next pass picks the rest up
    asyncio.run(go())
    assert sw.backlog == 0 and not any(e.status == "loading" for e in store.entries.values())
    assert sorted(store.serving()) == names


def test_settle_serves_at_once_with_zero_wait_and_waits_for_a_small_backlog(tmp_path, monkeypatch, capsys):
    store, sw, engine, root, names, peak = backlog(tmp_path, monkeypatch, 6, 0.1, 2)

    async def go(wait_s: float):
        backlog = await startup.begin(sw)
        t0 = time.monotonic()
        await startup.settle(sw, backlog, wait_s, 0.01)
        took, left = time.monotonic() - t0, sw.backlog
        await backlog
        return took, left

    async def both():
        first = await go(0.0)
        assert sorted(store.serving()) == names
        for n in names:
            write(root / n, b"changed " + n.encode())
        return first, await go(30.0)

    (took0, left0), (took1, left1) = asyncio.run(both())       # one event loop: the swapper's lock is bound to it
    assert left0 > 0 and took0 < 0.1                            # serving began with folders still pending
    assert "start-up validation done" in capsys.readouterr().out
    assert left1 == 0 and took1 < 30.0 and all(store.serving()[n].number == 2 for n in names)


def test_the_start_up_report_is_bounded_and_puts_refusals_first(tmp_path, monkeypatch, capsys):
    last = f"a{MAX_LINES + 9:03d}"                             # folders() names them a000, a001, …
    store, sw, engine, root, names, peak = backlog(tmp_path, monkeypatch, MAX_LINES + 10, 0.0, 4, fail={last})
    assert names[-1] == last
    asyncio.run(sw.step())
    report_adapters(store, pending=7)
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(f"{len(names) - 1} serving, 1 refused, 7 still being validated (requests for them wait)")
    assert len(out) == 2 + MAX_LINES and out[2].split()[:2] == ["refused", names[-1]]
    text = banner("http://127.0.0.1:1", "base", store, keyed=False)
    assert f"and {len(names) - 1 - 8} more" in text and names[20] not in text


# ---- AdmissionMiddleware waits for a pending folder's verdict (app.py), at the ASGI level ----------------------
class StubModels:
    """What AdmissionMiddleware uses of HotSwapModels: the base's name, admitted(), the tenant ContextVar."""

    def __init__(self, store):
        from contextlib import contextmanager
        from contextvars import ContextVar
        from types import SimpleNamespace

        from hylorada_serve.models import Admission
        self.base_model_paths = [SimpleNamespace(name="base")]
        self._tenant = ContextVar("tenant", default=None)

        @contextmanager
        def admitted():
            adm = Admission(store.admit())
            try:
                yield adm
            finally:
                store.release(adm.ticket)
        self.admitted = admitted


def asgi_client(store, sw, wait_s: float):
    """An httpx client on AdmissionMiddleware around an app that answers whether `model` serves when it runs."""
    import httpx
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from hylorada_serve.app import AdmissionMiddleware

    async def inner(scope, receive, send):
        name = (await Request(scope, receive).json())["model"]
        answer = {"model": name, "serving": name in store.serving(), "pending": sw.pending(name)}
        await JSONResponse(answer)(scope, receive, send)
    models = StubModels(store)
    app = AdmissionMiddleware(inner, models, swapper=sw, wait_s=wait_s)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t"), models


@contextlib.asynccontextmanager
async def validating(store, sw, wait_s: float, finish: bool = True):
    """The first pass's jobs running in the background while an ASGI client (asgi_client) asks; at the end the
    jobs are awaited (finish) or cancelled."""
    task = asyncio.create_task(sw.run_jobs(await sw.plan()))
    client, models = asgi_client(store, sw, wait_s=wait_s)
    try:
        async with client:
            yield client, models
    finally:
        if not finish:
            task.cancel()
        await asyncio.gather(task, return_exceptions=not finish)


def test_a_request_for_a_pending_folder_waits_for_it_and_others_do_not(tmp_path, monkeypatch):
    store, sw, engine, root, names, peak = backlog(tmp_path, monkeypatch, 12, 0.05, 1)

    async def go():
        async with validating(store, sw, wait_s=30.0) as (client, _):
            other = await client.post("/v1/completions", json={"model": "unknown", "prompt": "x"})
            last = await client.post("/v1/completions", json={"model": names[-1], "prompt": "x"})
            left = sw.backlog
        return other, last, left

    other, last, left = asyncio.run(go())
    assert other.status_code == 200 and other.json()["serving"] is False
    assert last.status_code == 200 and last.json() == {"model": names[-1], "serving": True, "pending": False}
    assert left > 0, "the pending folder was not moved to the front: the whole backlog ran first"


def test_the_wait_is_bounded_and_a_tenant_outside_the_scope_never_waits(tmp_path, monkeypatch):
    from types import SimpleNamespace
    store, sw, engine, root, names, peak = backlog(tmp_path, monkeypatch, 4, 0.5, 1)

    async def go():
        async with validating(store, sw, wait_s=0.05, finish=False) as (client, models):
            busy = await client.post("/v1/completions", json={"model": names[-1], "prompt": "x"})
            models._tenant.set(SimpleNamespace(allows=lambda name: False))
            t0 = time.monotonic()
            outside = await client.post("/v1/completions", json={"model": names[-2], "prompt": "x"})
            took = time.monotonic() - t0
        return busy, outside, took

    busy, outside, took = asyncio.run(go())
    assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
    assert "still being validated" in busy.json()["error"]["message"]
    assert outside.status_code == 200 and outside.json()["pending"] is True and took < 0.4   # answered, not waited
