"""BodyLimitMiddleware without an engine: over-limit bodies get 413 before the app reads them (declared or
chunked); bodies within the limit reach the app byte for byte; GET and a limit of 0 pass untouched."""
from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI, Request

from hylorada_serve.app import BodyLimitMiddleware

LIMIT = 1000


def make_app(limit=LIMIT):
    app = FastAPI()
    seen = []

    @app.post("/v1/completions")
    async def echo(request: Request):
        body = await request.body()
        seen.append(len(body))
        return {"bytes": len(body), "sum": sum(body)}

    @app.get("/v1/models")
    async def models():
        return {"ok": True}

    app.add_middleware(BodyLimitMiddleware, max_bytes=limit)
    return app, seen


def call(app, method, url, **kw):
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
            return await c.request(method, url, **kw)
    return asyncio.run(go())


def chunks(n, size=100):
    async def gen():
        for i in range(0, n, size):
            yield bytes(range(256))[: min(size, n - i)]
    return gen()


@pytest.mark.parametrize("n", [0, 999, LIMIT])
def test_within_limit_reaches_the_app_unchanged(n):
    app, seen = make_app()
    body = bytes(i % 251 for i in range(n))
    r = call(app, "POST", "/v1/completions", content=body)
    assert r.status_code == 200 and r.json() == {"bytes": n, "sum": sum(body)}
    r = call(app, "POST", "/v1/completions", content=chunks(n))          # no Content-Length: replayed
    assert r.status_code == 200 and r.json()["bytes"] == n


def test_over_limit_is_413_and_never_reaches_the_app():
    app, seen = make_app()
    r = call(app, "POST", "/v1/completions", content=b"x" * (LIMIT + 1))
    assert r.status_code == 413 and r.json()["error"]["type"] == "RequestTooLargeError"
    r = call(app, "POST", "/v1/completions", content=chunks(50 * LIMIT))   # chunked: stops at the limit
    assert r.status_code == 413 and "--max-body-mb" in r.json()["error"]["message"]
    assert seen == []


def test_malformed_length_get_and_no_limit():
    app, _ = make_app()
    r = call(app, "POST", "/v1/completions", content=b"{}", headers={"content-length": "lots"})
    assert r.status_code == 400
    assert call(app, "GET", "/v1/models").status_code == 200
    app0, seen0 = make_app(limit=0)
    assert call(app0, "POST", "/v1/completions", content=b"y" * (5 * LIMIT)).json()["bytes"] == 5 * LIMIT
