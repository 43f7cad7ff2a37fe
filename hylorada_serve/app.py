"""What hylorada-serve adds to vLLM's own OpenAI app (built by vLLM's build_app/init_app_state):

  * BodyLimitMiddleware — 413 for bodies over `--max-body-mb`, before anything reads them.
  * AuthMiddleware — the route table (routes.py: every route of vLLM's app, OPEN / API / ADMIT / ADMIN / OFF):
    `--api-key` on every route except /health, /metrics, /ping, /version; `--admin-key` (when set) on
    /v1/adapters*, where the inference key is not enough; then 404 for OFF and unclassified paths. Two
    Authorization headers are a 400. Keys are compared as SHA-256 digests with hmac.compare_digest and never
    logged. With `--metrics-key`, /metrics without it omits the series that name adapters.
  * AdmissionMiddleware — around every ADMIT route (each one that resolves `model` to an adapter): takes a store
    Ticket (the adapter versions current at admission), answers with `x-hylorada-adapter` /
    `x-hylorada-adapter-version` headers naming the version the request ran on, and records the per-adapter
    metrics.
  * the admin routes:  GET /v1/adapters                    every folder's status, version, kind, rank, reason
                       POST /v1/adapters/{name}/load       load DIR/name now (if new or changed)
                       POST /v1/adapters/{name}/reload     load DIR/name as a new version even if unchanged
                       POST /v1/adapters/{name}/unload     stop serving it (until load/reload)
    `name` must be a folder name inside DIR/ (no separators, no leading dot); nothing else can be loaded.
Completions, chat, streaming, /v1/models, the 404/400 error shapes, /health and vLLM's /metrics are vLLM's.
Header size and header read time are bounded below the app, in the HTTP protocol (http_bounds.py).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import time

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from starlette.middleware import Middleware

from . import metrics
from . import routes
from .models import HotSwapModels
from .scan import NAME_RE
from .watcher import HotSwapper

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
    """Keys and the route table (routes.py): OPEN routes need no key, ADMIN ones (and anything under /v1/adapters)
    the admin key, every other path the API key; then OFF and unclassified paths answer 404. A request with more
    than one Authorization header is a 400 (which one a layer reads is not something to leave to chance). /metrics
    without `metrics_key` (when one is set) loses the series that name adapter folders (metrics.redact)."""

    def __init__(self, app, api_key: str | None, admin_key: str | None, metrics_key: str | None = None):
        self.app = app
        self.api, self.admin, self.metrics = _digest(api_key), _digest(admin_key), _digest(metrics_key)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") == "OPTIONS":
            return await self.app(scope, receive, send)
        path = scope["path"]
        auths = [v for k, v in scope.get("headers") or [] if k == b"authorization"]
        if len(auths) > 1:
            return await error(400, "more than one Authorization header", "BadRequestError")(scope, receive, send)
        token = _bearer(auths[0]) if auths else None
        given = hashlib.sha256(token or b"").digest()          # 32 bytes whatever was sent: constant-time compare
        matches = lambda need: hmac.compare_digest(given, need) and token is not None   # noqa: E731
        where = routes.policy(path)
        if where == routes.OPEN:
            if path.startswith("/metrics") and self.metrics is not None and not matches(self.metrics):
                return await _redacted_metrics(self.app, scope, receive, send)
            return await self.app(scope, receive, send)
        need = self.admin if ((where == routes.ADMIN or path.startswith(ADMIN_PREFIX)) and self.admin) else self.api
        if need is not None and not matches(need):
            which = "admin" if need is self.admin else "API"
            return await error(401, f"missing or wrong {which} key (Authorization: Bearer ...)",
                               "AuthenticationError")(scope, receive, send)
        if where == routes.OFF:
            r = routes.route(path)
            why = f": {r.why}" if r is not None else " (not a route hylorada-serve has classified: hylorada_serve/routes.py)"
            return await error(404, f"{path} is not served by hylorada-serve{why}", "NotFoundError")(scope, receive, send)
        return await self.app(scope, receive, send)


def _digest(key: str | None) -> bytes | None:
    return hashlib.sha256(key.encode()).digest() if key else None


def _bearer(header: bytes) -> bytes | None:
    scheme, _, token = header.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else None


async def _redacted_metrics(app, scope, receive, send):
    """vLLM's /metrics answer with metrics.redact applied: asked for uncompressed, buffered, re-measured."""
    scope = {**scope, "headers": [(k, v) for k, v in scope.get("headers") or [] if k != b"accept-encoding"]}
    start, body = [None], bytearray()

    async def send_(msg):
        if msg["type"] == "http.response.start":
            start[0] = msg
            return
        body.extend(msg.get("body", b""))
        if msg.get("more_body", False):
            return
        out = metrics.redact(body.decode("utf-8", "replace")).encode() if start[0]["status"] == 200 else bytes(body)
        headers = [(k, v) for k, v in start[0].get("headers") or [] if k.lower() != b"content-length"]
        await send({**start[0], "headers": headers + [(b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})

    await app(scope, receive, send_)


class AdmissionMiddleware:
    """Pins each request on an ADMIT route (routes.py) to the adapter versions serving at admission
    (models.admitted), names the version it ran on in the response headers, and records its metrics. On
    /invocations, X-Amzn-SageMaker-Adapter-Identifier names the adapter: it is written into the body's `model`
    before vLLM reads it (vLLM's own injection edits a body it has already parsed, so the base answered)."""

    def __init__(self, app, models: HotSwapModels):
        self.app, self.models, self.base_name = app, models, models.base_model_paths[0].name

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or routes.policy(scope["path"]) != routes.ADMIT:
            return await self.app(scope, receive, send)
        adapter = dict(scope.get("headers") or []).get(SAGEMAKER_ADAPTER)
        if scope["path"] == "/invocations" and adapter is not None:
            scope, receive = await _with_model(scope, receive, adapter.decode("latin-1"))
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


SAGEMAKER_ADAPTER = b"x-amzn-sagemaker-adapter-identifier"


async def _with_model(scope, receive, model: str):
    """The request with its JSON body's `model` set to `model` (read whole: BodyLimitMiddleware, outside, bounds
    it). A body that is not a JSON object is passed on unchanged, for vLLM's 400."""
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            return scope, receive
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            break
    body = b"".join(chunks)
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        body = json.dumps({**obj, "model": model}).encode()
    headers = [(k, v) for k, v in scope.get("headers") or [] if k not in (b"content-length", b"transfer-encoding")]
    scope = {**scope, "headers": headers + [(b"content-length", str(len(body)).encode())]}
    sent = [False]

    async def replay():
        if sent[0]:
            return await receive()
        sent[0] = True
        return {"type": "http.request", "body": body, "more_body": False}
    return scope, replay


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
            max_body_bytes: int = 0, metrics_key: str | None = None) -> None:
    """Wire the store into vLLM's app (before it starts serving)."""
    models = HotSwapModels.adopt(app.state.openai_serving_models, swapper.store)
    swapper.store.on_forget = metrics.forget          # forgotten names leave /metrics too (bounded series)
    app.include_router(admin_router(swapper))
    # vLLM's build_app already built the middleware stack (its SageMaker bootstrap does), so insert ours as the
    # outermost layers and rebuild it, as that bootstrap itself does.
    app.user_middleware.insert(0, Middleware(AdmissionMiddleware, models=models))
    app.user_middleware.insert(0, Middleware(AuthMiddleware, api_key=api_key, admin_key=admin_key,
                                                 metrics_key=metrics_key))
    app.user_middleware.insert(0, Middleware(BodyLimitMiddleware, max_bytes=max_body_bytes))  # before anything reads
    app.middleware_stack = app.build_middleware_stack()
