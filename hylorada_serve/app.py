"""What hylorada-serve adds to vLLM's own OpenAI app (built by vLLM's build_app/init_app_state):

  * BodyLimitMiddleware — 413 for bodies over `--max-body-mb`, before anything reads them.
  * AuthMiddleware — `--api-key` on every route except /health, /metrics, /ping, /version; `--admin-key`
    (when set) on /v1/adapters*, where the inference key is not enough. Keys are compared as SHA-256 digests
    with hmac.compare_digest and never logged.
  * AdmissionMiddleware — around /v1/completions and /v1/chat/completions: takes a store Ticket (the adapter
    versions current at admission), answers with `x-hylorada-adapter` / `x-hylorada-adapter-version` headers
    naming the version the request ran on, and records the per-adapter metrics.
  * the admin routes:  GET /v1/adapters                    every folder's status, version, kind, rank, reason
                       POST /v1/adapters/{name}/load       load DIR/name now (if new or changed)
                       POST /v1/adapters/{name}/reload     load DIR/name as a new version even if unchanged
                       POST /v1/adapters/{name}/unload     stop serving it (until load/reload)
    `name` must be a folder name inside DIR/ (no separators, no leading dot); nothing else can be loaded.
Completions, chat, streaming, /v1/models, the 404/400 error shapes, /health and vLLM's /metrics are vLLM's.
"""
from __future__ import annotations

import hashlib
import hmac
import time

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from starlette.middleware import Middleware

from . import metrics
from .models import HotSwapModels
from .store import NAME_RE
from .watcher import HotSwapper

INFERENCE_PATHS = ("/v1/completions", "/v1/chat/completions")
OPEN_PATHS = ("/health", "/metrics", "/ping", "/version")
ADMIN_PREFIX = "/v1/adapters"


def error(status: int, message: str, err_type: str, param: str | None = None) -> JSONResponse:
    """OpenAI's error shape (the one vLLM answers with)."""
    return JSONResponse({"error": {"message": message, "type": err_type, "param": param, "code": status}},
                        status_code=status)


BODY_METHODS = (b"POST", b"PUT", b"PATCH")


class BodyLimitMiddleware:
    """413 for a request body over max_bytes (`--max-body-mb`; 0 = off) before the app reads it. vLLM's app
    buffers a whole JSON body before validating it and uvicorn sets no limit. A declared Content-Length over the
    limit is refused at once; a body without one (chunked) is read up to the limit, then refused, or replayed to
    the app unchanged when it fits (the app would have buffered it all anyway); a declared length within the limit
    passes untouched (the HTTP server enforces the framing). 16 MiB holds well over a million prompt tokens."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    def too_large(self) -> JSONResponse:
        return error(413, f"request body larger than {self.max_bytes} bytes (--max-body-mb)", "RequestTooLargeError")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.max_bytes <= 0 or scope.get("method", "").encode() not in BODY_METHODS:
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                return await error(400, "malformed Content-Length header", "BadRequestError")(scope, receive, send)
            if n > self.max_bytes:
                return await self.too_large()(scope, receive, send)
            return await self.app(scope, receive, send)
        messages, seen = [], 0
        while True:                                      # chunked: buffer up to the limit, then replay
            msg = await receive()
            if msg["type"] != "http.request":            # client went away
                return
            seen += len(msg.get("body", b""))
            if seen > self.max_bytes:
                return await self.too_large()(scope, receive, send)
            messages.append(msg)
            if not msg.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)


class AuthMiddleware:
    def __init__(self, app, api_key: str | None, admin_key: str | None):
        self.app = app
        digest = lambda k: hashlib.sha256(k.encode()).digest() if k else None   # noqa: E731
        self.api, self.admin = digest(api_key), digest(admin_key)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") == "OPTIONS":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path in OPEN_PATHS or path.startswith("/metrics/"):
            return await self.app(scope, receive, send)
        need = self.admin if (path.startswith(ADMIN_PREFIX) and self.admin) else self.api
        if need is not None:
            auth = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            given = hashlib.sha256(token.strip()).digest()
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given, need):
                which = "admin" if need is self.admin else "API"
                return await error(401, f"missing or wrong {which} key (Authorization: Bearer ...)",
                                   "AuthenticationError")(scope, receive, send)
        return await self.app(scope, receive, send)


class AdmissionMiddleware:
    """Pins each inference request to the adapter versions serving at admission (models.admitted), names the
    version it ran on in the response headers, and records its metrics."""

    def __init__(self, app, models: HotSwapModels):
        self.app, self.models, self.base_name = app, models, models.base_model_paths[0].name

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in INFERENCE_PATHS:
            return await self.app(scope, receive, send)
        t0, status, counter = time.perf_counter(), [500], [None]
        with self.models.admitted() as adm:

            async def send_(msg):
                if msg["type"] == "http.response.start":
                    status[0] = msg["status"]
                    headers = list(msg.get("headers") or [])
                    ctype = dict(headers).get(b"content-type", b"")
                    counter[0] = metrics.TokenCounter(stream=b"text/event-stream" in ctype)
                    if adm.used is not None:
                        headers += [(b"x-hylorada-adapter", adm.used.name.encode()),
                                    (b"x-hylorada-adapter-version", str(adm.used.number).encode())]
                    msg = {**msg, "headers": headers}
                elif msg["type"] == "http.response.body" and counter[0] is not None and status[0] == 200:
                    counter[0].feed(msg.get("body", b""))
                await send(msg)

            try:
                await self.app(scope, receive, send_)
            finally:
                label = adm.used.name if adm.used else (self.base_name if status[0] == 200 else "-")
                metrics.request_done(label, status[0], time.perf_counter() - t0,
                                     None if counter[0] is None else counter[0].total())


def admin_router(swapper: HotSwapper) -> APIRouter:
    router = APIRouter()
    store = swapper.store

    def bad_name(name: str) -> JSONResponse | None:
        if not NAME_RE.match(name):
            return error(400, "adapter name must be a folder name inside the adapters folder "
                              "([A-Za-z0-9][A-Za-z0-9._-]{0,63})", "BadRequestError", "name")
        return None

    def answer(st: dict) -> JSONResponse:
        if st["status"] == "missing":
            return error(404, st.get("reason") or f"no adapter '{st['name']}'", "NotFoundError", "name")
        if st["status"] == "refused":
            return error(422, st.get("reason") or "refused", "UnprocessableEntityError", "name")
        return JSONResponse(st)

    @router.get(ADMIN_PREFIX)
    async def list_adapters():
        return JSONResponse({"object": "list", "adapters_dir": str(store.root), "data": store.status(),
                             "retired_not_yet_freed": store.retired_count(),
                             "engine_lora_ids": sorted(await swapper.engine.list_loras())})  # what vLLM holds

    @router.post(ADMIN_PREFIX + "/{name}/load")
    async def load(name: str):
        return bad_name(name) or answer(await swapper.load(name))

    @router.post(ADMIN_PREFIX + "/{name}/reload")
    async def reload(name: str):
        return bad_name(name) or answer(await swapper.load(name, force=True))

    @router.post(ADMIN_PREFIX + "/{name}/unload")
    async def unload(name: str):
        if (resp := bad_name(name)) is not None:
            return resp
        if name not in store.entries:
            return error(404, f"no adapter '{name}'", "NotFoundError", "name")
        return JSONResponse(await swapper.unload(name))

    return router


def install(app: FastAPI, swapper: HotSwapper, api_key: str | None, admin_key: str | None,
            max_body_bytes: int = 0) -> None:
    """Wire the store into vLLM's app (before it starts serving)."""
    models = HotSwapModels.adopt(app.state.openai_serving_models, swapper.store)
    swapper.store.on_forget = metrics.forget          # forgotten names leave /metrics too (bounded series)
    app.include_router(admin_router(swapper))
    # vLLM's build_app already built the middleware stack (its SageMaker bootstrap does), so insert ours as the
    # outermost layers and rebuild it, as that bootstrap itself does.
    app.user_middleware.insert(0, Middleware(AdmissionMiddleware, models=models))
    app.user_middleware.insert(0, Middleware(AuthMiddleware, api_key=api_key, admin_key=admin_key))
    app.user_middleware.insert(0, Middleware(BodyLimitMiddleware, max_bytes=max_body_bytes))  # before anything reads
    app.middleware_stack = app.build_middleware_stack()
