"""Engine death (its own server): kill the engine core → /health turns 503 (or the server is already gone),
no request hangs, and the server exits non-zero so a supervisor restarts it; nothing is left behind, not even a
model worker stopped before the kill (patches/orphans.py)."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from bench.proc import stop as proc_stop

from .conftest import API_KEY, fresh_adapters, session_pids, start

pytestmark = pytest.mark.vllm


def named_pids(sid: int, name: bytes) -> list[int]:
    """Processes of session `sid` whose command line or name holds `name` (vLLM retitles its processes)."""
    out = []
    for pid in session_pids(sid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/comm").read_bytes()
        except OSError:
            continue
        if name in cmd:
            out.append(pid)
    return out


def engine_core_pids(sid: int) -> list[int]:
    return named_pids(sid, b"EngineCore")


def worker_pids(sid: int) -> list[int]:
    return named_pids(sid, b"VLLM::Worker")


def test_engine_death_makes_server_unhealthy_and_exit_nonzero(demo_files):
    root, base, built = demo_files
    srv = start(root, fresh_adapters(root, built), base, built)
    try:
        cores = engine_core_pids(srv.proc.pid)
        assert cores, "no EngineCore process found"
        # its model workers stopped first: a worker that cannot run its own shutdown must still not outlive the
        # engine core (CI once saw one and its resource tracker alive 15 s after the server exited)
        workers = worker_pids(srv.proc.pid)
        assert workers, "no VLLM::Worker process found"
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        for pid in cores:
            os.kill(pid, signal.SIGKILL)
        health, answers = [], []             # /health codes; completion codes (a hung request fails the test)
        # /health alone first, every 10 ms: vLLM's monitor marks the engine dead without any request failing, and
        # the 503 must show then. A completion that fails ends the server within ~0.1 s and vLLM's own watchdog
        # ends it within 5 s, so a completion sent at once raced the probe (CI saw only [200] once)
        t0 = time.time()
        while time.time() - t0 < 30 and 503 not in health and srv.proc.poll() is None:
            try:
                health.append(httpx.get(srv.url + "/health", timeout=5).status_code)
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
        assert 503 in health, f"/health never turned 503 after the engine died: {health}\n{srv.log_tail()}"
        done = threading.Event()

        def watch_health():                  # its own thread from here on: no 200 once it said 503
            while not done.is_set() and srv.proc.poll() is None:
                try:
                    health.append(httpx.get(srv.url + "/health", timeout=5).status_code)
                except httpx.HTTPError:
                    pass                                            # going away (a hang would show in answers)
                time.sleep(0.05)
        watcher = threading.Thread(target=watch_health, daemon=True)
        watcher.start()
        t0 = time.time()
        while time.time() - t0 < 60 and srv.proc.poll() is None:
            try:
                r = httpx.post(srv.url + "/v1/completions", timeout=20, headers={"Authorization": f"Bearer {API_KEY}"},
                               json={"model": "demo-lora", "prompt": "x", "max_tokens": 2})
                answers.append(r.status_code)
            except httpx.TimeoutException as e:
                pytest.fail(f"a request hung after the engine died: {type(e).__name__}\n{srv.log_tail()}")
            except (httpx.ConnectError, httpx.RemoteProtocolError):
                pass                                                   # the server is going away: not a hang
            time.sleep(0.1)
        done.set()
        watcher.join(timeout=10)
        code = srv.proc.wait(timeout=60)
        assert 503 in health and 200 not in health[health.index(503):], health   # unhealthy until the watchdog stops it
        assert answers and all(c >= 500 for c in answers), answers  # answered, and never a 200 from a dead engine
        assert code not in (0, None), f"exit code {code}:\n{srv.log_tail()}"
    finally:
        _, left = proc_stop(srv.proc, timeout_s=90, settle_s=15)
    assert left == 0, "processes of the server's session were alive 15 s after it exited (stop SIGKILLed them)"
    assert session_pids(srv.proc.pid) == []
