"""Bench-only: upstream vLLM with the one transport fix hylorada-serve has (hylorada_serve/http_bounds.py).

On PYTHONPATH for bench.compare's `vllm-lora-nodelay` system: uvicorn's httptools protocol sets TCP_NODELAY on
each connection, so a kept-alive response's body no longer waits 40 ms behind its headers for the client's delayed
ACK. Nothing else changes: upstream vLLM, its LoRA path, our plugin excluded. It separates what the transport
fix is worth from what the adapter path is worth when hylorada-serve is compared with upstream vLLM.
"""
import socket

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
