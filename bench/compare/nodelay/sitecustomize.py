"""Bench-only: upstream vLLM with hylorada-serve's host fixes, none of its adapter path.

On PYTHONPATH for bench.compare's `vllm-lora-nodelay` system: uvicorn's httptools protocol sets TCP_NODELAY on
each connection, so a kept-alive response's body no longer waits 40 ms behind its headers for the client's delayed
ACK. Nothing else changes: upstream vLLM, its LoRA path, our plugin excluded. It separates what the transport
fix is worth from what the adapter path is worth when hylorada-serve is compared with upstream vLLM.

With HYLORADA_BENCH_SPIN_NAP_US set (bench.compare's `vllm-lora-hostfix` system) the shm-ring busy wait of the
engine processes also sleeps that long instead of yielding (patches/spin_nap.py's nap_for, as in hylorada-serve): vLLM's
ring waits call `os.sched_yield()` and nothing else in these processes does, so that function is replaced.
"""
import os
import socket

_NAP_US = os.environ.get("HYLORADA_BENCH_SPIN_NAP_US", "").strip()
if _NAP_US:
    from hylorada_patches.spin_nap import nap_for       # the product's nap; the plugin itself stays excluded
    os.sched_yield = nap_for(float(_NAP_US) / 1e6, os.sched_yield)

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except Exception:                                       # not a process that serves HTTP
    HttpToolsProtocol = None

if HttpToolsProtocol is not None:
    _made = HttpToolsProtocol.connection_made

    def connection_made(self, transport):
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        _made(self, transport)

    HttpToolsProtocol.connection_made = connection_made
