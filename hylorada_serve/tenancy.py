"""Tenants on one server (`--keys FILE`): each key's scope and limits, applied before a request reaches the engine.

    AuthMiddleware (auth.py) finds the tenant from the key → TenantMiddleware (here):
      requests_per_second (every route the key calls)       → 429 + Retry-After
      a tenant without the base that names no model (ADMIT) → 404
      tokens_per_minute, concurrent (ADMIT routes)          → 429 + Retry-After
      the request runs scoped (models.scoped): /v1/models and every `model` lookup see only the tenant's adapters
      (and the base only if allowed), so another tenant's adapter is a 404 exactly like an unknown one — vLLM's
      own answer, same code path, same body
      a stream that takes the tenant over tokens_per_minute is cut: the chunk that crossed the budget is replaced
      by a final error event (OpenAI: `data: {"error": {... "code": 429}}` then `data: [DONE]`; /v1/messages: an
      Anthropic `event: error`; /v1/responses: a Responses `error` event), and the app is told the client went away, so vLLM aborts the request
      per-tenant metrics (metrics.tenant_done / tenant_limited)

KeysFile holds the current KeyTable and reloads it when the file changes (polled; `watch`): a file that no longer
parses keeps the previous table in force, and says why in the log and in `status()` (GET /health/details).
With no --keys none of this is installed.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

from . import keys as keys_mod
from . import metrics, routes
from .asgi import error, json_object, read_body, replaying
from .auth import request_info
from .limits import Limiter, Refusal

log = logging.getLogger("hylorada_serve")
SAGEMAKER_ADAPTER = b"x-amzn-sagemaker-adapter-identifier"


class KeysFile:
    """The keys file in force. Construction raises keys.KeysFileError (a server must not start on a bad file)."""

    def __init__(self, path: str | Path, on_change=None):
        self.path, self.on_change = Path(path), on_change
        self._sig = self._signature()
        self.table = keys_mod.load(self.path)
        self.loaded_at, self.error, self.reloads = time.time(), None, 0

    def _signature(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino

    def check(self) -> bool:
        """Reload if the file changed; True when a new table came into force."""
        sig = self._signature()
        if sig == self._sig:
            return False
        self._sig = sig
        if sig is None:
            self.error = f"{self.path}: missing; the previous keys stay in force"
            log.error("keys file %s", self.error)
            return False
        try:
            table = keys_mod.load(self.path)
        except Exception as e:                          # KeysFileError, or anything unforeseen: never half-applied
            self.error = (str(e) if isinstance(e, keys_mod.KeysFileError) else
                          f"{self.path}: could not be read ({type(e).__name__}: {e})") + \
                "\n  (the previous keys stay in force)"
            log.error("keys file not reloaded: %s", self.error)
            return False
        old, self.table = self.table, table
        self.loaded_at, self.error, self.reloads = time.time(), None, self.reloads + 1
        log.info("keys file reloaded: %d tenants, %d keys", len(table.tenants), len(table.by_digest))
        if self.on_change is not None:
            self.on_change(old, table)
        return True

    async def watch(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.check)
            except Exception:                               # never let the watch die: the next pass retries
                log.exception("keys file check failed")
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except asyncio.TimeoutError:
                pass

    def status(self) -> dict:
        return {"file": str(self.path), "tenants": len(self.table.tenants), "keys": len(self.table.by_digest),
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
                "reloads": self.reloads, "error": self.error}


def forget_removed(old, new) -> None:
    """KeysFile.on_change: tenants no longer in the file leave /metrics."""
    for name in {t.name for t in old.tenants} - {t.name for t in new.tenants}:
        metrics.forget_tenant(name)


class TenantMiddleware:
    def __init__(self, app, models, limiter: Limiter):
        self.app, self.models, self.limiter = app, models, limiter

    async def __call__(self, scope, receive, send):
        info = request_info(scope) if scope["type"] == "http" else None
        if info is None or info.tenant is None:
            return await self.app(scope, receive, send)
        tenant, status, spent = info.tenant, [500], [0]
        try:
            if (r := self.limiter.rate(tenant)) is not None:
                status[0] = 429
                return await self._limited(r, info, scope, receive, send)
            if routes.policy(scope["path"]) != routes.ADMIT:
                with self.models.scoped(tenant):
                    return await self.app(scope, receive, _status_into(status, send))
            if not tenant.base:
                body = await read_body(receive)
                if body is None:
                    return
                receive = replaying(body, receive)
                header = dict(scope.get("headers") or []).get(SAGEMAKER_ADAPTER)
                if header is not None and scope["path"] == "/invocations":
                    named = header.decode("latin-1")     # AdmissionMiddleware writes it into `model`, even empty
                else:
                    named = (json_object(body) or {}).get("model")
                if not named:
                    status[0], info.reason = 404, "base model not allowed"
                    return await error(404, "this key may not use the base model: name one of its adapters in "
                                            "`model`", "NotFoundError", "model")(scope, receive, send)
            if (r := self.limiter.admit(tenant)) is not None:
                status[0] = 429
                return await self._limited(r, info, scope, receive, send)
            try:
                with self.models.scoped(tenant):
                    await self._run(tenant, info, scope, receive, send, status, spent)
            finally:
                self.limiter.finish(tenant)
        finally:
            metrics.tenant_done(tenant.name, status[0], spent[0])

    async def _limited(self, r: Refusal, info, scope, receive, send):
        info.reason = r.limit
        metrics.tenant_limited(info.tenant.name, r.limit)
        return await error(429, r.message, "RateLimitError", headers={"Retry-After": str(r.retry_after)}
                           )(scope, receive, send)

    async def _run(self, tenant, info, scope, receive, send, status, spent):
        """The app, with this request's generated tokens counted against tokens_per_minute (a stream cut when it
        goes over)."""
        cut, stream, seen = asyncio.Event(), [False], [0]

        async def send_(msg):
            if cut.is_set():
                return                                      # after the cut: the app's remaining chunks are dropped
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
                stream[0] = b"text/event-stream" in dict(msg.get("headers") or []).get(b"content-type", b"")
            elif msg["type"] == "http.response.body" and stream[0] and status[0] == 200 and info.counter is not None:
                now = info.counter.so_far()
                delta, seen[0] = now - seen[0], max(seen[0], now)
                spent[0] += max(0, delta)
                if delta > 0 and (r := self.limiter.spend(tenant, delta)) is not None:
                    info.reason = "tokens_per_minute (stream cut)"
                    metrics.tenant_limited(tenant.name, r.limit)
                    cut.set()
                    await send({"type": "http.response.body", "body": _final_event(scope["path"], r),
                                "more_body": False})
                    return
            await send(msg)

        await self.app(scope, _until(cut, receive) if tenant.tokens_per_minute > 0 else receive, send_)
        if status[0] == 200 and info.counter is not None and not cut.is_set():
            extra = info.counter.total() - seen[0]      # a JSON answer's usage; a stream's usage beyond its chunks
            if extra > 0:
                spent[0] += extra
                self.limiter.spend(tenant, extra)


def _status_into(status: list, send):
    async def send_(msg):
        if msg["type"] == "http.response.start":
            status[0] = msg["status"]
        await send(msg)
    return send_


def _until(cut: asyncio.Event, receive):
    """`receive`, answering http.disconnect once `cut` is set (Starlette's StreamingResponse listens for it and
    cancels the stream; vLLM aborts the request)."""
    async def receive_():
        if cut.is_set():
            return {"type": "http.disconnect"}
        get, wait = asyncio.ensure_future(receive()), asyncio.ensure_future(cut.wait())
        done, pending = await asyncio.wait({get, wait}, return_when=asyncio.FIRST_COMPLETED)
        for p in pending:
            p.cancel()
        return get.result() if get in done else {"type": "http.disconnect"}
    return receive_


def _final_event(path: str, r: Refusal) -> bytes:
    if path == "/v1/responses":
        return ("event: error\ndata: " + json.dumps({"type": "error", "code": "rate_limit_exceeded",
                                                   "message": r.message, "param": None}) + "\n\n").encode()
    if path == "/v1/messages":
        return ("event: error\ndata: " + json.dumps({"type": "error", "error": {"type": "rate_limit_error",
                                                                            "message": r.message}}) + "\n\n").encode()
    err = {"error": {"message": r.message, "type": "RateLimitError", "param": None, "code": 429}}
    return ("data: " + json.dumps(err) + "\n\ndata: [DONE]\n\n").encode()
