"""bench.method.tenant_isolation's client side against a stub server (no engine): the open loop sends Poisson
arrivals for the phase's length with the tenant's key, records every answer's status (429s too) and its latency,
and the percentiles are read from the sorted samples."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench.method.tenant_isolation import open_loop, pct


def test_pct():
    xs = [float(i) for i in range(1, 101)]
    assert pct(xs, 0.5) == 51.0 and pct(xs, 0.99) == 100.0 and pct([3.0], 0.99) == 3.0


def test_open_loop_records_every_status_with_the_key():
    seen = []

    class Stub(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            seen.append((self.headers["authorization"], body["model"]))
            code = 429 if len(seen) % 2 == 0 else 200
            out = b"{}"
            self.send_response(code)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        out = []
        open_loop(f"http://127.0.0.1:{srv.server_port}", "k-1", "demo-lora", rate=40, seconds=1.0, seed=0, out=out)
    finally:
        srv.shutdown()
    assert 10 <= len(out) <= 120 and len(out) == len(seen)            # Poisson(40/s) over 1 s, every one answered
    assert {c for c, _ in out} == {200, 429} and all(s > 0 for _, s in out)
    assert set(seen) == {("Bearer k-1", "demo-lora")}
