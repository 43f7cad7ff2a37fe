"""What a client can do with headers alone, before its request reaches the app.

  * two Authorization headers are a 400, whichever is right (before: the last one won);
  * a huge header (10 connections, each sending up to 8 MiB of one header line without ending it) is answered
    431 and the connection closed after --max-header-kb (64 KiB), /health answers (< 5 s) and the API server's RSS does
    not grow (before: httptools buffered it all, +637 MB for ten 64 MB headers; nothing was ever closed);
  * a slow header (a byte every 0.5 s) or a silent connection is closed --header-timeout (10 s) after it opened,
    while /health answers (< 5 s) (before: never closed);
  * every connection gets TCP_NODELAY: a real uvicorn on asyncio's default loop, serving a socket bound
    beforehand as vLLM does, leaves it off (the plain protocol: 0), so a kept-alive response's body waited 40 ms
    behind its headers for the client's delayed ACK (bench.method.hotswap: 104 ms -> ~40 ms);
  * with --metrics-key, /metrics without that key has vLLM's series but none that names an adapter
    (hylorada_adapter_*, vllm:lora_requests_info); with it, all (unit test on the running server's real text).
"""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import pytest

from hylorada_serve.auth import AuthMiddleware

from .conftest import API_KEY


def run_mw(mw, path: str, headers: list, body: bytes = b"ok") -> tuple[int, bytes]:
    sent = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
        await send({"type": "http.response.body", "body": body[len(body) // 2:]})

    async def send(msg):
        sent.append(msg)

    async def receive():
        return {"type": "http.request", "body": b""}

    mw.app = app
    asyncio.run(mw({"type": "http", "method": "GET", "path": path, "headers": headers}, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_two_authorization_headers_are_400():
    mw = AuthMiddleware(None, api_key="k-api", admin_key="k-admin")
    good, bad = (b"authorization", b"Bearer k-api"), (b"authorization", b"Bearer nope")
    assert run_mw(mw, "/v1/completions", [good])[0] == 200
    for headers in ([bad, good], [good, bad], [good, good]):
        assert run_mw(mw, "/v1/completions", headers)[0] == 400
    assert run_mw(mw, "/v1/adapters", [(b"authorization", b"Bearer k-admin")] * 2)[0] == 400


@pytest.mark.vllm
def test_two_authorization_headers_are_400_over_http(server):
    headers = [("Authorization", "Bearer wrong"), ("Authorization", f"Bearer {API_KEY}")]
    r = httpx.get(server.url + "/v1/models", headers=headers, timeout=30)
    assert r.status_code == 400 and "more than one Authorization" in r.text, r.text


@pytest.mark.vllm
def test_metrics_key_hides_adapter_series(server):
    text = httpx.get(server.url + "/metrics", timeout=30).content              # the real exposition
    assert b"hylorada_adapter_load_events_total" in text and b"broken-bytes" in text
    mw = AuthMiddleware(None, api_key="k-api", admin_key=None, metrics_key="k-metrics")
    for headers in ([], [(b"authorization", b"Bearer k-api")], [(b"authorization", b"Bearer wrong")]):
        status, out = run_mw(mw, "/metrics", headers, text)
        assert status == 200 and b"vllm:num_requests_running" in out and b"hylorada_adapters_serving" in out
        assert b"hylorada_adapter_" not in out and b"lora_requests_info" not in out and b"broken-bytes" not in out
        assert b"demo-lora" not in out
    assert run_mw(mw, "/metrics", [(b"authorization", b"Bearer k-metrics")], text)[1] == text
    assert run_mw(AuthMiddleware(None, "k-api", None), "/metrics", [], text)[1] == text   # no metrics key: open
    from types import SimpleNamespace
    tenants = AuthMiddleware(None, "k-api", None, keys=SimpleNamespace(table=None))          # --keys: names withheld
    out = run_mw(tenants, "/metrics", [(b"authorization", b"Bearer k-api")], text)[1]
    assert b"vllm:num_requests_running" in out and b"demo-lora" not in out and b"hylorada_adapter_" not in out


HEALTH_MS = 5000     # /health answers while bad connections are held (the 2 shared cores may be loaded: 4.3 s seen)


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def health_ms(url: str) -> float:
    t0 = time.perf_counter()
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    return (time.perf_counter() - t0) * 1000


def address(server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def huge_header(server, sent: list, answers: list) -> None:
    """Up to 8 MiB of one unfinished header line; records how much went out before the server closed."""
    n, chunk = 0, b"a" * 65536
    with socket.create_connection(address(server), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        try:
            while n < (8 << 20):
                s.sendall(chunk)
                n += len(chunk)
        except OSError:                          # closed by the server
            pass
        sent.append(n)
        try:
            answers.append(s.recv(200))
        except OSError:
            answers.append(b"")


@pytest.mark.vllm
def test_huge_headers_are_cut_off_and_rss_stays_flat(server):
    before = rss_mib(server.proc.pid)
    sent, answers = [], []
    threads = [threading.Thread(target=huge_header, args=(server, sent, answers)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert health_ms(server.url) < HEALTH_MS
    grown = rss_mib(server.proc.pid) - before
    assert len(sent) == 10 and max(sent) < (8 << 20), f"the server read whole 8 MiB headers: {sent}"
    assert any(a.startswith(b"HTTP/1.1 431") for a in answers), answers
    assert grown < 50, f"API server RSS grew {grown:.0f} MiB"


@pytest.mark.vllm
def test_slow_and_silent_headers_are_closed(server):
    limit = 10 + 3                               # --header-timeout default + slack
    with socket.create_connection(address(server), timeout=limit + 5) as slow, \
            socket.create_connection(address(server), timeout=limit + 5) as silent:
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        t0, closed = time.monotonic(), None
        slow.settimeout(0.5)
        while time.monotonic() - t0 < limit + 5:                            # bounded
            try:
                slow.sendall(b"X")
                if slow.recv(200, socket.MSG_PEEK) is not None:
                    closed = time.monotonic() - t0
                    break
            except socket.timeout:
                pass
            except OSError:
                closed = time.monotonic() - t0
                break
            assert health_ms(server.url) < HEALTH_MS
        assert closed is not None and closed < limit, f"slow header not closed after {time.monotonic() - t0:.0f} s"
        silent.settimeout(5)
        assert silent.recv(200).startswith(b"HTTP/1.1 408")                 # opened at the same time: closed too


def nodelay_of(protocol_class) -> int:
    """TCP_NODELAY of the server side of a connection to a real uvicorn serving `protocol_class` on asyncio's
    default loop, from a socket bound before the server starts (vLLM's serve_http does the same)."""
    import uvicorn

    seen = []

    class Recording(protocol_class):
        def connection_made(self, transport):
            super().connection_made(transport)
            seen.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

    listen = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listen.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, http=Recording, loop="asyncio", lifespan="off", log_level="error"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[listen])), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:   # bounded
            time.sleep(0.02)
        with httpx.Client(base_url=f"http://127.0.0.1:{listen.getsockname()[1]}", timeout=10) as http:
            assert http.get("/").text == "ok" and http.get("/").text == "ok"          # one kept-alive connection
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listen.close()
    assert len(seen) == 1, seen
    return seen[0]


def test_every_connection_gets_tcp_nodelay():
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from hylorada_serve.http_bounds import bounded_protocol
    assert nodelay_of(HttpToolsProtocol) == 0            # what vLLM's server had: Nagle on
    assert nodelay_of(bounded_protocol(64 << 10, 10.0)) == 1
