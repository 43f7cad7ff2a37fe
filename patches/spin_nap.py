"""vLLM's shm-ring busy wait naps instead of yielding: on a machine with few cores it starved everything else.

vLLM 0.32's engine core and worker wait for each other on shared-memory rings (vllm/distributed/
device_communicators/shm_broadcast.py). For 1 s after each read a waiting reader (SpinCondition.wait) and a writer
waiting for free space (acquire_write) spin on `sched_yield()`. On the CPU platform the worker's compute threads
hold one core and the engine core spins on the other; with a yield-spinner there, the API server and every other
process on that core (the clients of a benchmark or a test) got no CPU for 0.3-4.4 s at a time while the engine
kept generating (measured on this 2-core machine, Linux 6.18: a heartbeat thread in the API server and one in the
client stalled together, the engine's processes never; a streamed completion's first chunk, written at once by
the server, reached its client 4 s and 400 tokens later, so a client that hung up after it had not saved a
token — tests/serve/test_reliability_requests.py's hang-up test failed about one run in four).

The fix: that one module-level `sched_yield` becomes `nap()`, a real sleep of NAP_S (50 us, plus the kernel's
timer slack): the spinner gives its core away until the next check, so the rest get it when they wake. A reader
still sees a write within ~0.1 ms (an engine step here is milliseconds); after 1 s idle it still parks on its
zmq socket as before. HYLORADA_SPIN_NAP_US (env.py) sets the nap; 0 keeps vLLM's sched_yield.
"""
from __future__ import annotations

import time

from .env import Settings
from .wrap import patch

NAP_S = Settings.spin_nap_us / 1e6                  # the default: 50 us


def nap_for(seconds: float, orig):
    """What shm_broadcast.sched_yield becomes: a sleep of `seconds`, or `orig` (vLLM's yield) for 0."""
    if seconds <= 0:
        return orig

    def nap() -> None:
        time.sleep(seconds)
    nap.seconds = seconds
    return nap


def install() -> None:
    import vllm.distributed.device_communicators.shm_broadcast as shm
    seconds = Settings.read().spin_nap_us / 1e6
    patch(shm, "sched_yield", f"{__name__}.nap", lambda orig: nap_for(seconds, orig))
