"""hylorada_serve/replicas/ingress.py: which requests are broadcast, the adapter of a request, and the routed path
against a fake Serve handle: a cold adapter's burst follows its first request, retries, the 503 (the cluster test
drives the real path)."""
from __future__ import annotations

import asyncio
import json
import time

import pytest
from starlette.requests import Request

from hylorada_serve.replicas import ingress as ingress_mod
from hylorada_serve.replicas.ingress import Ingress, adapter_of, broadcast_kind
from hylorada_serve.replicas.replica import ReplicaUnavailable

H = {"content-type": "application/json"}


def test_what_goes_to_every_replica():
    assert broadcast_kind("GET", "/metrics") == "metrics"
    assert broadcast_kind("GET", "/v1/replicas") == "replicas"
    for path in ("/v1/adapters/a/load", "/v1/adapters/a/reload", "/v1/adapters/a/unload", "/v1/load_lora_adapter",
                 "/v1/unload_lora_adapter"):
        assert broadcast_kind("POST", path) == "admin", path
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("GET", "/v1/adapters"),
                         ("GET", "/health"), ("POST", "/metrics")):
        assert broadcast_kind(method, path) is None, (method, path)


def test_the_adapter_is_the_bodys_model_unless_it_is_the_base():
    body = json.dumps({"model": "caps", "prompt": "x"}).encode()
    assert adapter_of("POST", H, body, "base") == "caps"
    assert adapter_of("POST", H, json.dumps({"model": "base"}).encode(), "base") == ""
    assert adapter_of("GET", H, body, "base") == ""
    for bad in (b"not json", b"[1, 2]", json.dumps({"model": 3}).encode(), b""):
        assert adapter_of("POST", H, bad, "base") == "", bad
    assert adapter_of("POST", {"content-type": "multipart/form-data"}, body, "base") == ""


class Gen:
    """A fake streaming DeploymentResponseGenerator: `first` (or an exception) after `delay`, then `chunks`."""

    def __init__(self, log, model, first, chunks=(), delay=0.0):
        self.log, self.model, self.first, self.chunks, self.delay = log, model, first, list(chunks), delay
        self.sent = False
        self.cancelled = False

    def cancel(self):
        self.cancelled = True

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.sent:
            self.sent = True
            self.log.append(("start", self.model, time.monotonic()))
            await asyncio.sleep(self.delay)
            self.log.append(("first", self.model, time.monotonic()))
            if isinstance(self.first, BaseException):
                raise self.first
            return self.first
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)


class Handle:
    def __init__(self, script):
        self.script, self.log, self.model = script, [], None

    def options(self, multiplexed_model_id="", stream=False):
        self.model = multiplexed_model_id
        return self

    @property
    def forward(self):
        return self

    def remote(self, *args):
        self.last = self.script(self.log, self.model)
        return self.last


def first(replica="r1", held=True):
    return {"status": 200, "headers": [("content-type", "text/plain")], "replica": replica, "held": held}


def request(model):
    async def receive():
        return {"type": "http.request", "body": json.dumps({"model": model}).encode(), "more_body": False}
    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json")]}
    return Request(scope, receive)


def ingress(handle, **kw):
    return Ingress(handle, registry=None, base_name="base", max_body_bytes=1 << 20, **kw)


async def body(resp):
    return b"".join([c async for c in resp.body_iterator])


def test_a_burst_for_a_cold_adapter_follows_its_first_request(monkeypatch):
    monkeypatch.setattr(ingress_mod, "PUSH_S", 0.05)
    handle = Handle(lambda log, m: Gen(log, m, first(), [b"ok"], delay=0.2))
    ing = ingress(handle)

    async def main():
        return await asyncio.gather(*(ing(request("cold")) for _ in range(3)), ing(request("other")))
    resps = asyncio.run(main())
    assert [r.status_code for r in resps] == [200] * 4
    starts = [t for kind, m, t in handle.log if kind == "start" and m == "cold"]
    firsts = [t for kind, m, t in handle.log if kind == "first" and m == "cold"]
    other = [t for kind, m, t in handle.log if kind == "start" and m == "other"]
    assert len(starts) == 3 and starts[1] >= firsts[0] + 0.05 and starts[2] >= firsts[0] + 0.05
    assert other[0] < firsts[0], "another adapter's first request waited for this one"
    assert resps[0].headers["x-hylorada-affinity"] == "hit" and resps[0].headers["x-hylorada-replica"] == "r1"


def test_a_replica_that_cannot_answer_is_retried_and_the_retries_are_told(monkeypatch):
    monkeypatch.setattr(ingress_mod, "RETRY_SLEEP_S", 0.01)
    tries = []

    def script(log, m):
        tries.append(m)
        return Gen(log, m, ReplicaUnavailable("gone") if len(tries) < 3 else first("r2", held=False), [b"x"])
    resp = asyncio.run(ingress(Handle(script))(request("a")))
    assert resp.status_code == 200 and resp.headers["x-hylorada-retries"] == "2"
    assert resp.headers["x-hylorada-affinity"] == "load" and asyncio.run(body(resp)) == b"x"


def test_no_replica_in_time_is_a_503_with_retry_after_and_other_errors_are_raised(monkeypatch):
    monkeypatch.setattr(ingress_mod, "RETRY_SLEEP_S", 0.01)
    resp = asyncio.run(ingress(Handle(lambda log, m: Gen(log, m, ReplicaUnavailable("gone"))), retry_s=0.05)(
        request("a")))
    assert resp.status_code == 503 and resp.headers["retry-after"] == "5" and b"gone" in resp.body
    with pytest.raises(ValueError):
        asyncio.run(ingress(Handle(lambda log, m: Gen(log, m, ValueError("a bug"))))(request("a")))


def test_a_client_that_leaves_mid_stream_cancels_the_replicas_work_and_headers_pass_through():
    handle = Handle(lambda log, m: Gen(log, m, {**first(), "headers": [("set-cookie", "a=1"), ("set-cookie", "b=2"),
                                                                       ("x-hylorada-replica", "spoofed")]},
                                       [b"1", b"2", b"3"]))

    async def main():
        resp = await ingress(handle)(request("a"))
        it = resp.body_iterator
        got = await it.__anext__()
        await it.aclose()                                   # what starlette does when the client disconnects
        return resp, got
    resp, got = asyncio.run(main())
    assert got == b"1" and handle.last.cancelled
    cookies = [v for k, v in resp.raw_headers if k == b"set-cookie"]
    assert cookies == [b"a=1", b"b=2"] and resp.headers["x-hylorada-replica"] == "r1"
    assert [k for k, _ in resp.raw_headers].count(b"x-hylorada-replica") == 1
    whole = Handle(lambda log, m: Gen(log, m, first(), [b"1", b"2"]))
    resp = asyncio.run(ingress(whole)(request("a")))
    assert asyncio.run(body(resp)) == b"12" and not whole.last.cancelled
