"""Child script of test_shm_notify.py: a busy vLLM SpinCondition reader against a writer process.

    python shm_notify_reader.py {patched|stock} N

The writer (a spawned child) publishes N wake-ups, one every 0.2 ms; the reader records a read every 0.2 ms
and never goes idle, as vLLM's engine core and worker do under continuous traffic. Prints one JSON line:
the reader's glibc malloc in-use growth (MiB) over the run, and over each half of the wake-ups. No fixed sleeps: the writer pings until the reader
has received one (the subscription is up, however slow the machine), and only then do the N wake-ups start.
"""
import ctypes
import json
import multiprocessing as mp
import sys
import time

import zmq


def writer(addr: str, n: int, subscribed, go, sent) -> None:
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition
    ctx = zmq.Context()
    w = SpinCondition(False, ctx, addr)
    deadline = time.monotonic() + 120
    while not subscribed.wait(0.01) and time.monotonic() < deadline:   # PUB drops until the SUB has joined
        w.notify()
    go.wait(120)
    for i in range(n):
        w.notify()
        sent.value = i + 1
        time.sleep(0.0002)
    w.local_notify_socket.close(linger=0)
    ctx.term()


class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_in_use_mb(libc) -> float:
    m = libc.mallinfo2()
    return (m.uordblks + m.hblkhd) / 2**20


if __name__ == "__main__":
    mode, n = sys.argv[1], int(sys.argv[2])
    if mode == "patched":
        from hylorada_patches import shm_notify
        shm_notify.install()
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition
    from vllm.utils.network_utils import get_open_zmq_ipc_path

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    addr, spawn = get_open_zmq_ipc_path(), mp.get_context("spawn")
    subscribed, go, sent = spawn.Event(), spawn.Event(), spawn.RawValue("q", 0)
    proc = spawn.Process(target=writer, args=(addr, n, subscribed, go, sent))
    proc.start()
    ctx = zmq.Context()
    r = SpinCondition(True, ctx, addr)
    if not r.local_notify_socket.poll(120_000):      # the writer's pings reach us: subscribed
        sys.exit("no ping from the writer in 120 s")
    subscribed.set()
    while r.local_notify_socket.poll(100):           # the writer saw it and stopped pinging: drain
        r.local_notify_socket.recv()
    r.last_read = 0.0
    r.wait(timeout_ms=50)                            # one idle wait: the pipe is checked and found empty
    before = malloc_in_use_mb(libc)
    go.set()
    deadline, half = time.monotonic() + 120, None
    while proc.is_alive() and time.monotonic() < deadline:
        r.record_read()                              # a read every step, never idle, never polls
        if half is None and sent.value >= n // 2:
            half = malloc_in_use_mb(libc)            # halfway through the wake-ups
        time.sleep(0.0002)
    proc.join(5)
    end = malloc_in_use_mb(libc)
    print(json.dumps({"mode": mode, "n": n, "growth_mb": end - before, "first_half_mb": half - before,
                      "second_half_mb": end - half}), flush=True)
    for s in (r.local_notify_socket, r.read_cancel_socket, r.write_cancel_socket):
        s.close(linger=0)
    ctx.term()
