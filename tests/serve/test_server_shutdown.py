"""Runs after test_server.py/test_hotswap.py (file order): SIGTERM to the shared server while a request is in
flight → the request ends (finished or cleanly closed), the process exits 0 within the bound, and no process
of its session (engine core, workers) is left behind."""
from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from .conftest import API_KEY, session_pids, stop

pytestmark = pytest.mark.vllm


def test_sigterm_exits_zero_and_leaves_no_processes(server):
    outcome = []

    def long_stream():
        body = {"model": "demo-lora", "prompt": "the cat", "max_tokens": 400, "ignore_eos": True, "stream": True}
        try:
            with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60,
                              headers={"Authorization": f"Bearer {API_KEY}"}) as r:
                outcome.append(("status", r.status_code))
                for _ in r.iter_lines():
                    pass
            outcome.append(("ended", None))
        except httpx.HTTPError as e:                 # the server closing the stream at shutdown is a clean end
            outcome.append(("closed", type(e).__name__))

    t = threading.Thread(target=long_stream, daemon=True)
    t.start()
    time.sleep(1.0)                                  # in flight
    t0 = time.time()
    code = stop(server, signal.SIGTERM, timeout=60)
    took = time.time() - t0
    t.join(timeout=30)
    assert not t.is_alive(), "the in-flight request hung after shutdown"
    assert outcome and outcome[0] == ("status", 200)
    assert code == 0, f"exit code {code} after {took:.1f} s:\n{server.log_tail()}"
    assert took < 60
    assert session_pids(server.proc.pid) == []
    server.exit_code.append(code)
