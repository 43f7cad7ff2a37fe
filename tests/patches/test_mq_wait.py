"""mq_wait: a reader of vLLM's shm message queue naps (sleeps) in its busy window instead of spinning on
sched_yield, and parks on its socket (vLLM's own wait) after it. No engine."""
from __future__ import annotations

import time

import pytest

from patches import mq_wait


def test_nap_setting():
    assert mq_wait.nap_seconds(is_cpu=True, env={}) == pytest.approx(50e-6)
    assert mq_wait.nap_seconds(is_cpu=False, env={}) is None            # GPU: keep vLLM's spin
    assert mq_wait.nap_seconds(is_cpu=True, env={mq_wait.ENV: "0"}) is None
    assert mq_wait.nap_seconds(is_cpu=False, env={mq_wait.ENV: "200"}) == pytest.approx(200e-6)
    for bad in ("-1", "abc", "1.5"):
        with pytest.raises(ValueError, match=mq_wait.ENV):
            mq_wait.nap_seconds(is_cpu=True, env={mq_wait.ENV: bad})


class _Poller:
    def __init__(self):
        self.calls = []

    def poll(self, timeout=None):
        self.calls.append(timeout)
        return []


def test_busy_window_naps_then_parks(monkeypatch):
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition
    monkeypatch.setattr(mq_wait, "_ORIG", None)
    monkeypatch.setattr(SpinCondition, "wait", SpinCondition.wait)     # restored after the test
    yields = []
    monkeypatch.setattr("vllm.distributed.device_communicators.shm_broadcast.sched_yield", lambda: yields.append(1))
    monkeypatch.setenv(mq_wait.ENV, "2000")
    mq_wait.install(is_cpu=True)
    cond = SpinCondition.__new__(SpinCondition)
    cond.is_reader, cond.busy_loop_s, cond.last_read = True, 10.0, time.monotonic()
    cond.poller, cond.read_cancel_socket, cond.local_notify_socket = _Poller(), object(), object()
    t0 = time.perf_counter()
    cond.wait(timeout_ms=5)
    assert time.perf_counter() - t0 >= 1.5e-3 and not yields and not cond.poller.calls   # napped, no spin, no park
    cond.last_read = time.monotonic() - 60                             # busy window over: vLLM's own park
    cond.wait(timeout_ms=5)
    assert cond.poller.calls == [5] and not yields
