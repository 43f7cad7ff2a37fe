"""Wraps `vllm.distributed.device_communicators.shm_broadcast.SpinCondition.wait`: how a reader of vLLM's
shared-memory message queue waits during its busy window.

vLLM 0.32: for 1 s after its last read a reader loops on `os.sched_yield()`, then parks on a zmq socket. The
engine-core process reads the worker's results through such a queue, so during every forward it spins on a
core. vLLM's CPU worker runs one OpenMP thread per core, so the spinning reader takes a core from the forward:
on this 2-core machine py-spy found the engine core in `sched_yield` for 41 % of all samples while the worker
computed. `sched_yield` does not give the core away to a runnable thread of another process under CFS.

Here a reader in its busy window sleeps `HYLORADA_MQ_NAP_US` microseconds instead (the kernel's timer
slack makes that ~50-100 µs more): the core goes to the forward and a result is seen within ~0.1 ms, against
steps of several ms on the CPU. Outside the busy window vLLM's own wait runs (park on the socket).

    HYLORADA_MQ_NAP_US   the nap, µs (integer >= 0; 0 = vLLM's sched_yield spin).
                         Default: 50 on the CPU platform; on others vLLM's own spin is kept (a GPU step leaves
                         the CPU cores idle, so spinning costs nothing there).

Parking at once instead (busy window 0) was measured and rejected: 25.7 output tok/s against 408 on the
bench anchor workload — wake-ups then depend on the writer's zmq notify, which can be dropped (vLLM falls
back to a 5 s re-check).
"""
from __future__ import annotations

import os
import time

_ORIG = None
ENV = "HYLORADA_MQ_NAP_US"


def nap_seconds(is_cpu: bool, env=None) -> float | None:
    """The nap to install in seconds: from the env, else 50 µs on the CPU platform, else None (keep vLLM's)."""
    env = os.environ if env is None else env
    raw = env.get(ENV, "")
    if raw == "":
        return 50e-6 if is_cpu else None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{ENV} must be a whole number of microseconds >= 0 (got {raw!r})") from None
    if value < 0:
        raise ValueError(f"{ENV} must be a whole number of microseconds >= 0 (got {raw!r})")
    return value * 1e-6 if value else None


def install(is_cpu: bool) -> None:
    global _ORIG
    nap = nap_seconds(is_cpu)
    if nap is None or _ORIG is not None:
        return
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition
    _ORIG = SpinCondition.wait

    def wait(self, timeout_ms: int | None = None) -> None:
        if time.monotonic() <= self.last_read + self.busy_loop_s:
            time.sleep(nap)
            return
        _ORIG(self, timeout_ms)

    wait.__doc__ = _ORIG.__doc__
    SpinCondition.wait = wait
