"""TenantMiddleware and KeysFile (hylorada_serve/tenancy.py) without an engine: a real Starlette streaming app
behind the middleware.

  * a request over requests_per_second / concurrent / tokens_per_minute is a 429 with Retry-After and never
    reaches the app; requests of the API key (no tenant) pass untouched;
  * a stream that takes its tenant over tokens_per_minute ends with one final error event and `[DONE]`, the app's
    generator is cancelled (so vLLM would abort the request), nothing after the cut reaches the client;
  * a tenant without the base that names no `model` is a 404; naming one passes (the scope decides the rest);
  * KeysFile: a changed file comes into force; a bad or missing one keeps the previous table and says why.
"""
from __future__ import annotations

import asyncio
import json
import os
from contextlib import contextmanager

from starlette.responses import JSONResponse, StreamingResponse

from hylorada_serve.auth import request_info
from hylorada_serve.keys import Tenant, digest_hex
from hylorada_serve.limits import Limiter
from hylorada_serve.metrics import TokenCounter
from hylorada_serve.tenancy import KeysFile, TenantMiddleware


class Models:
    def __init__(self):
        self.scopes = []

    @contextmanager
    def scoped(self, tenant):
        self.scopes.append(tenant.name)
        yield


class StreamApp:
    """/v1/chat/completions: an SSE stream of `n` one-token chunks (what vLLM sends), counted as
    AdmissionMiddleware counts them; records how far the generator got and whether it was cancelled."""

    def __init__(self, n: int = 20, delay: float = 0.01):
        self.n, self.delay, self.produced, self.cancelled, self.calls = n, delay, 0, False, 0

    async def __call__(self, scope, receive, send):
        self.calls += 1
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        if scope["path"] != "/v1/chat/completions" or not json.loads(body or b"{}").get("stream"):
            info = request_info(scope)
            info.counter = TokenCounter(stream=False)
            resp = {"choices": [{"text": "x"}], "usage": {"completion_tokens": 7}}
            info.counter.feed(json.dumps(resp).encode())
            return await JSONResponse(resp)(scope, receive, send)
        info = request_info(scope)
        info.counter = TokenCounter(stream=True)

        async def gen():
            try:
                for i in range(self.n):
                    await asyncio.sleep(self.delay)
                    self.produced += 1
                    chunk = b"data: " + json.dumps({"choices": [{"delta": {"content": f"t{i}"}}]}).encode() + b"\n\n"
                    info.counter.feed(chunk)
                    yield chunk
                info.counter.feed(b"data: [DONE]\n\n")
                yield b"data: [DONE]\n\n"
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        await StreamingResponse(gen(), media_type="text/event-stream")(scope, receive, send)


def call(mw, tenant, path="/v1/chat/completions", body=None, headers=()):
    """One request through `mw` as `tenant` (None: the API key). Returns (status, headers, body bytes)."""
    sent, payload = [], json.dumps(body if body is not None else {"model": "team-a-x"}).encode()
    done = asyncio.Event()

    async def receive():
        if not done.is_set() and not getattr(receive, "read", False):
            receive.read = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await done.wait()                     # the client stays connected until the response ends
        return {"type": "http.disconnect"}

    async def send(msg):
        sent.append(msg)
        if msg["type"] == "http.response.body" and not msg.get("more_body", False):
            done.set()

    scope = {"type": "http", "method": "POST", "path": path,
             "headers": [(b"content-type", b"application/json"), *headers],
             "asgi": {"version": "3.0", "spec_version": "2.3"}}
    request_info(scope).tenant = tenant

    async def go():
        await asyncio.wait_for(mw(scope, receive, send), 10)
    asyncio.run(go())
    start = sent[0]
    return start["status"], dict(start.get("headers") or []), b"".join(m.get("body", b"") for m in sent[1:])


def test_limits_answer_429_with_retry_after_before_the_app():
    app = StreamApp()
    mw = TenantMiddleware(app, Models(), Limiter())
    fast = Tenant("fast", adapters=("team-a-x",), requests_per_second=1)
    assert call(mw, fast)[0] == 200
    status, headers, body = call(mw, fast)
    err = json.loads(body)["error"]
    assert status == 429 and headers[b"retry-after"] == b"1" and err["type"] == "RateLimitError" and err["code"] == 429
    assert "1 requests per second" in err["message"] and app.calls == 1
    assert all(call(mw, None)[0] == 200 for _ in range(5)) and app.calls == 6     # the API key: no tenant, no limits


def test_concurrent_limit_counts_running_requests():
    app = StreamApp(n=30, delay=0.02)
    mw, one = TenantMiddleware(app, Models(), Limiter()), Tenant("one", adapters=("team-a-x",), concurrent=1)

    async def both():
        loop = asyncio.get_running_loop()
        first = loop.run_in_executor(None, call, mw, one, "/v1/chat/completions", {"model": "team-a-x", "stream": True})
        await asyncio.sleep(0.2)
        second = await loop.run_in_executor(None, call, mw, one)
        return await first, second
    first, second = asyncio.run(both())
    assert first[0] == 200 and second[0] == 429 and second[1][b"retry-after"] == b"1"
    assert b"1 requests running" in second[2]
    assert call(mw, one)[0] == 200                                   # freed when the stream ended


def test_a_stream_over_the_token_budget_is_cut_cleanly_and_aborted():
    app = StreamApp(n=200, delay=0.005)
    lim, t = Limiter(), Tenant("budget", adapters=("team-a-x",), tokens_per_minute=12)
    status, _, body = call(TenantMiddleware(app, Models(), lim), t, body={"model": "team-a-x", "stream": True})
    events = [e for e in body.decode().split("\n\n") if e]
    assert status == 200 and len(events) == 14, events                # 12 tokens, the error, [DONE]
    assert all(json.loads(e[6:])["choices"] for e in events[:12])
    err = json.loads(events[12][6:])["error"]
    assert err["code"] == 429 and err["type"] == "RateLimitError" and "12 generated tokens per minute" in err["message"]
    assert events[13] == "data: [DONE]"
    assert app.cancelled and app.produced < 40, app.produced          # the generator stopped (vLLM: abort)
    r = lim.admit(t)
    assert r is not None and r.limit == "tokens_per_minute"           # and the next request is refused up front


def test_json_answers_count_their_usage():
    lim, t = Limiter(), Tenant("j", adapters=("team-a-x",), tokens_per_minute=10)
    mw = TenantMiddleware(StreamApp(), Models(), lim)
    assert call(mw, t)[0] == 200 and call(mw, t)[0] == 200           # 7, then 14 of 10 (counted after the fact)
    assert call(mw, t)[0] == 429


def test_a_tenant_without_the_base_must_name_a_model():
    app, models = StreamApp(), Models()
    mw, t = TenantMiddleware(app, models, Limiter()), Tenant("nb", adapters=("team-a-x",), base=False)
    for body in ({}, {"model": None}, {"model": ""}, {"messages": []}):
        status, _, out = call(mw, t, body=body)
        assert status == 404 and b"may not use the base model" in out, (body, out)
    empty = [(b"x-amzn-sagemaker-adapter-identifier", b"")]         # becomes `model: ""` (the base) downstream
    status, _, out = call(mw, t, path="/invocations", body={"model": "team-a-x"}, headers=empty)
    assert status == 404 and b"may not use the base model" in out
    assert app.calls == 0
    assert call(mw, t)[0] == 200 and models.scopes == ["nb"]          # named: runs scoped (vLLM decides 404 or not)


def test_keys_file_reload_keeps_the_previous_one_when_bad(tmp_path):
    path = tmp_path / "k.toml"
    path.write_text(f'[tenants.a]\nkeys = ["{digest_hex("ka")}"]\n')
    seen = []
    kf = KeysFile(path, on_change=lambda old, new: seen.append((len(old.tenants), len(new.tenants))))
    assert kf.check() is False and kf.status()["error"] is None
    path.write_text(f'[tenants.a]\nkeys = ["{digest_hex("ka")}"]\n[tenants.b]\nkeys = ["{digest_hex("kb")}"]\n')
    os.utime(path, ns=(1, 2))
    assert kf.check() is True and [t.name for t in kf.table.tenants] == ["a", "b"] and seen == [(1, 2)]
    path.write_text('[tenants.a]\nkeys = ["not-a-digest"]\n')
    assert kf.check() is False and [t.name for t in kf.table.tenants] == ["a", "b"]
    assert f"{path}:2: tenant 'a': keys[0]" in kf.status()["error"] and "previous keys stay" in kf.status()["error"]
    path.unlink()
    assert kf.check() is False and "missing" in kf.status()["error"] and len(kf.table.tenants) == 2
    path.write_text(f'[tenants.c]\nkeys = ["{digest_hex("kc")}"]\n')
    import hylorada_serve.tenancy as tenancy_mod
    real = tenancy_mod.keys_mod.load
    tenancy_mod.keys_mod.load = lambda p: (_ for _ in ()).throw(RuntimeError("unforeseen"))
    try:                                                               # anything at all: recorded, not half-applied
        assert kf.check() is False and "RuntimeError: unforeseen" in kf.status()["error"] and len(kf.table.tenants) == 2
    finally:
        tenancy_mod.keys_mod.load = real
    os.utime(path, ns=(5, 6))
    assert kf.check() is True and kf.status() | {"loaded_at": None} == {
        "file": str(path), "tenants": 1, "keys": 1, "loaded_at": None, "reloads": 2, "error": None}
