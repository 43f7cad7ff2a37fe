"""Bounds on what a client may do before its request reaches the app: header size and header read time.

uvicorn picks its httptools protocol when httptools is installed (it is, with vLLM), and that protocol has no
limit on header size (vLLM's `h11_max_incomplete_event_size` only reaches the h11 protocol) and no timer while a
request's headers arrive (`timeout_keep_alive` runs only between requests). Measured by a red team: ten
unauthenticated half-sent 64 MB headers grew the API server by 637 MB, and a connection sending a byte now and
then was never closed. `bounded_protocol` is uvicorn's httptools protocol with both bounds:

  * more than `max_header_bytes` received before a request's headers are complete → 431, connection closed;
  * headers not complete `header_timeout_s` after the connection opened (or the request's first byte arrived,
    on a kept-alive connection) → 408, connection closed.

It also sets TCP_NODELAY on every connection. vLLM hands uvicorn a socket it bound itself, and asyncio's default loop
does not set TCP_NODELAY on connections accepted from such a socket. A response is written as two segments (the
headers, then the body or a stream's first event). On a kept-alive connection, Nagle's algorithm holds the second
segment until the client ACKs the first, and the client delays that ACK by 40 ms. Measured: 44 ms for GET /v1/models
on httpx's pooled connections, against 0.6 ms on a fresh connection, and +40 ms on every streamed first token.

Passed to vLLM's serve_http as uvicorn's `http=` (a protocol class). Bodies are bounded by BodyLimitMiddleware.
"""
from __future__ import annotations

import socket

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def no_delay(transport) -> None:
    """TCP_NODELAY on a TCP transport's socket (Unix sockets and a socket already closed are left alone)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:                               # the peer already went; uvicorn sees that on its own
            pass


def _close_with(transport, status: bytes) -> None:
    if not transport.is_closing():
        transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        transport.close()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes = 64 << 10
    header_timeout_s = 10.0

    def connection_made(self, transport) -> None:
        no_delay(transport)
        super().connection_made(transport)
        self._header_bytes, self._awaiting_headers, self._header_timer = 0, True, None
        self._arm()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._awaiting_headers:
            _close_with(self.transport, b"408 Request Timeout")

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        awaiting = self._awaiting_headers
        super().data_received(data)
        if awaiting and self._awaiting_headers:      # still no complete header block: all of it was header bytes
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._disarm()
                _close_with(self.transport, b"431 Request Header Fields Too Large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers = True
        self._arm()

    def on_headers_complete(self) -> None:
        self._awaiting_headers, self._header_bytes = False, 0
        self._disarm()
        super().on_headers_complete()


def bounded_protocol(max_header_bytes: int, header_timeout_s: float) -> type[BoundedHttpToolsProtocol]:
    """uvicorn's `http=` protocol class with these bounds."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,),
                {"max_header_bytes": int(max_header_bytes), "header_timeout_s": float(header_timeout_s)})
