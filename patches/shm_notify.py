"""A busy shm reader lets its zmq notify socket's command queue grow; process it a few times a second.

vLLM 0.32's engine core and worker talk through shared-memory rings (vllm/distributed/device_communicators/
shm_broadcast.py). Each write also publishes a 1-byte wake-up on a zmq PUB socket; the reader's SUB socket
(ZMQ_CONFLATE) is only polled after 1 s without reads (`SpinCondition.wait`). Under continuous traffic the
reader never polls, and libzmq's I/O thread queues an `activate_read` command in that socket's mailbox for
every wake-up it receives: a conflate pipe whose reader last found it empty reports "reader asleep" on each
flush, and commands are only processed when the application touches the socket (libzmq issue #3171; its docs:
"if recv is not called on the inbound socket, the queue and memory will grow with each message received").
Measured: 656-byte mailbox chunks (16 commands each) from the `ZMQbg/IO/0` thread, never freed, in both the
engine core and the worker, about 40 bytes per engine step (memray + gdb on a soak; docs/reliability.md).

The fix: when a reader records a read, at most every DRAIN_S seconds it calls getsockopt(ZMQ_EVENTS) on the
notify socket, which makes libzmq process (and free) the queued commands. It reads no message, so the idle
wake-up protocol is unchanged.
"""
from __future__ import annotations

import zmq

from .wrap import wrap

DRAIN_S = 0.25


def process_commands(cond) -> None:
    """Let libzmq process the pending commands of a reader's notify socket (frees them); reads nothing."""
    cond.local_notify_socket.getsockopt(zmq.EVENTS)


def record_read(orig, self) -> None:
    orig(self)                                            # sets self.last_read = time.monotonic()
    if self.last_read - getattr(self, "_hylorada_drained", 0.0) >= DRAIN_S:
        self._hylorada_drained = self.last_read
        process_commands(self)


def install() -> None:
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition
    wrap(SpinCondition, "record_read")(record_read)
