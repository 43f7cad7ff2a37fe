"""spin_nap: vLLM's shm-ring busy wait sleeps between checks instead of spinning on sched_yield.

The starvation it fixes needs a real engine on a machine with few cores (tests/serve/test_reliability_requests.py's
hang-up test is the end-to-end check: it failed about one run in four with the yield spin). Here: the install
replaces exactly the yield the ring's waits call, once; a busy SpinCondition reader then sleeps — its process
uses a small share of a core while it waits — where the stock one spins; the setting is validated."""
from __future__ import annotations

import os
import time

import pytest

from hylorada_patches import spin_nap
from hylorada_patches.env import Settings


def cpu_share(wait, seconds: float = 0.3) -> float:
    """CPU time / wall time of this thread calling wait() for `seconds`."""
    w0, c0 = time.monotonic(), time.thread_time()
    while time.monotonic() - w0 < seconds:
        wait()
    return (time.thread_time() - c0) / (time.monotonic() - w0)


def busy_reader():
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition
    import zmq
    cond = SpinCondition(is_reader=True, context=zmq.Context.instance(), notify_address="inproc://spin-nap-test")
    cond.record_read()                                   # within busy_loop_s of a read: wait() spins
    return cond


def test_install_replaces_the_rings_yield_once():
    import vllm.distributed.device_communicators.shm_broadcast as shm
    spin_nap.install()
    installed = shm.sched_yield
    spin_nap.install()
    assert shm.sched_yield is installed and installed.seconds == pytest.approx(spin_nap.NAP_S)


def test_busy_reader_sleeps_instead_of_spinning():
    """A reader inside its busy window: the patched wait() leaves the core (CPU share well under half) and still
    returns within a millisecond or so; vLLM's own yield is kept for the comparison (reported, not asserted: how
    much a yield spin burns depends on what else the core runs)."""
    import vllm.distributed.device_communicators.shm_broadcast as shm
    spin_nap.install()
    cond = busy_reader()
    calls = [0]

    def wait():
        cond.record_read()
        cond.wait(timeout_ms=1000)
        calls[0] += 1
    share = cpu_share(wait)
    assert share < 0.5, f"patched busy wait used {share:.0%} of a core"
    assert calls[0] > 100, f"only {calls[0]} waits in 0.3 s: the nap is far longer than {spin_nap.NAP_S * 1e6:.0f} us"
    stock = cpu_share(os.sched_yield)
    print(f"CPU share while waiting: patched {share:.0%}, sched_yield spin {stock:.0%}")
    assert shm.sched_yield is not os.sched_yield


def test_zero_keeps_vllms_yield():
    assert spin_nap.nap_for(0, os.sched_yield) is os.sched_yield
    assert spin_nap.nap_for(1e-4, os.sched_yield).seconds == 1e-4


@pytest.mark.parametrize("raw,want", [("", 50.0), ("0", 0.0), ("200", 200.0), (" 12.5 ", 12.5)])
def test_setting(raw, want):
    assert Settings.read({"HYLORADA_SPIN_NAP_US": raw}).spin_nap_us == want


@pytest.mark.parametrize("raw", ["-1", "abc", "nan", "20000"])
def test_bad_setting_is_refused(raw):
    with pytest.raises(ValueError, match="HYLORADA_SPIN_NAP_US"):
        Settings.read({"HYLORADA_SPIN_NAP_US": raw})
