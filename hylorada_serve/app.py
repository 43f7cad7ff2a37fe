"""What hylorada-serve adds to vLLM's own OpenAI app (built by vLLM's build_app/init_app_state), outermost first:

  * AuditMiddleware (audit.py, with --audit-log) — one JSON line per admin action and per refused request.
  * BodyLimitMiddleware — 413 for bodies over `--max-body-mb`, before anything reads them.
  * AuthMiddleware (auth.py) — the route table (routes.py: OPEN / API / ADMIT / ADMIN / OFF) and the keys: the API
    key, the admin key (/v1/adapters*, /health/details), a tenant's key (--keys); 404 for OFF routes.
  * TenantMiddleware (tenancy.py, with --keys) — a tenant's limits (429 + Retry-After) and scope.
  * AdmissionMiddleware — around every ADMIT route (each one that resolves `model` to an adapter): while folders
    are still being validated (start-up in the background), a request for one of them waits for its verdict
    (`--validation-wait`, then 503 + Retry-After); then takes a store Ticket (the adapter versions current at
    admission), answers with `x-hylorada-adapter` / `x-hylorada-adapter-version` headers naming the version the
    request ran on, and records the per-adapter metrics.
  * the admin routes:  GET /v1/adapters                    every folder's status, version, kind, rank, reason,
                                                           where it lives (slot / host / disk) and its bytes
                       POST /v1/adapters/{name}/load       load DIR/name now (if new or changed)
                       POST /v1/adapters/{name}/reload     load DIR/name as a new version even if unchanged
                       POST /v1/adapters/{name}/unload     stop serving it (until load/reload)
                       GET /health/details                 engine, adapters and keys file state
                       POST /v1/load_lora_adapter          vLLM's body {lora_name, lora_path}: lora_path must be
                       POST /v1/unload_lora_adapter        DIR/<lora_name>; load / unload that folder (the router
                                                           contract of llm-d's sidecar and AIBrix)
    `name` must be a folder name inside DIR/ (no separators, no leading dot); nothing else can be loaded. A tenant
    admin key sees and acts on its own adapters only (another's name is a 404 like an unknown one).
Completions, chat, streaming, /v1/models, the 404/400 error shapes, /health and vLLM's /metrics are vLLM's.
Header size and header read time are bounded below the app, in the HTTP protocol (http_bounds.py).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.middleware import Middleware

from . import metrics, residency
from . import routes
from .asgi import error, json_object, read_body, replaying
from .auth import ADMIN_PREFIX, AuthMiddleware, request_info
from .models import HotSwapModels
from .scan import NAME_RE
from .watcher import HotSwapper


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


class AdmissionMiddleware:
    """Pins each request on an ADMIT route (routes.py) to the adapter versions serving at admission
    (models.admitted), names the version it ran on in the response headers, and records its metrics. On
    /invocations, X-Amzn-SageMaker-Adapter-Identifier names the adapter: it is written into the body's `model`
    before vLLM reads it (vLLM's own injection edits a body it has already parsed, so the base answered)."""

    def __init__(self, app, models: HotSwapModels, swapper: HotSwapper | None = None, wait_s: float = 60.0):
        self.app, self.models, self.base_name = app, models, models.base_model_paths[0].name
        self.swapper, self.wait_s = swapper, wait_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or routes.policy(scope["path"]) != routes.ADMIT:
            return await self.app(scope, receive, send)
        adapter = dict(scope.get("headers") or []).get(SAGEMAKER_ADAPTER)
        if scope["path"] == "/invocations" and adapter is not None:
            scope, receive = await _with_model(scope, receive, adapter.decode("latin-1"))
        if self.swapper is not None and self.swapper.backlog:
            scope, receive, busy = await self._await_verdict(scope, receive)
            if busy is not None:
                return await busy(scope, receive, send)
        t0, status, counter, info = time.perf_counter(), [500], [None], request_info(scope)
        with self.models.admitted() as adm:

            async def send_(msg):
                if msg["type"] == "http.response.start":
                    status[0] = msg["status"]
                    headers = list(msg.get("headers") or [])
                    ctype = dict(headers).get(b"content-type", b"")
                    counter[0] = info.counter = metrics.TokenCounter(stream=b"text/event-stream" in ctype)
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
                info.adapter = adm.used.name if adm.used else (adm.asked if status[0] != 200 else None)
                metrics.request_done(label, status[0], time.perf_counter() - t0,
                                     None if counter[0] is None else counter[0].total())


    async def _await_verdict(self, scope, receive):
        """While folders are pending (swapper.backlog): the body's `model`, if it names a pending folder the caller
        may use, waits for that folder's verdict. Returns (scope, receive replaying the body, None) or, when the
        wait ran out, a 503 response to send. A caller outside the name's scope never waits (vLLM's 404)."""
        if scope.get("method", "").encode() not in BODY_METHODS:
            return scope, receive, None
        body = await read_body(receive)
        if body is None:
            return scope, receive, None
        receive = replaying(body, receive)
        name = (json_object(body) or {}).get("model")
        tenant = self.models._tenant.get()
        if not isinstance(name, str) or not self.swapper.pending(name) or (tenant is not None and
                                                                           not tenant.allows(name)):
            return scope, receive, None
        if await self.swapper.wait_for(name, self.wait_s):
            return scope, receive, None
        return scope, receive, error(503, f"adapter '{name}' is still being validated ({self.swapper.backlog} "
                                     "folders queued); retry shortly", "ServiceUnavailableError",
                                     headers={"Retry-After": "5"})


SAGEMAKER_ADAPTER = b"x-amzn-sagemaker-adapter-identifier"


async def _with_model(scope, receive, model: str):
    """The request with its JSON body's `model` set to `model` (read whole: BodyLimitMiddleware, outside, bounds
    it). A body that is not a JSON object is passed on unchanged, for vLLM's 400."""
    body = await read_body(receive)
    if body is None:
        return scope, receive
    if (obj := json_object(body)) is not None:
        body = json.dumps({**obj, "model": model}).encode()
    headers = [(k, v) for k, v in scope.get("headers") or [] if k not in (b"content-length", b"transfer-encoding")]
    scope = {**scope, "headers": headers + [(b"content-length", str(len(body)).encode())]}
    return scope, replaying(body, receive)


def admin_router(swapper: HotSwapper, keys=None) -> APIRouter:
    """The admin routes. A tenant admin (request_info(...).tenant set) sees and acts on its own adapters only."""
    router = APIRouter()
    store = swapper.store

    def refused(request: Request, name: str) -> JSONResponse | None:
        if not NAME_RE.match(name):
            return error(400, "adapter name must be a folder name inside the adapters folder "
                              "([A-Za-z0-9][A-Za-z0-9._-]{0,63})", "BadRequestError", "name")
        tenant = request_info(request.scope).tenant
        if tenant is not None and not tenant.allows(name):
            return error(404, f"no adapter '{name}'", "NotFoundError", "name")     # as for an unknown name
        return None

    def answer(st: dict) -> JSONResponse:
        if st["status"] == "missing":
            return error(404, st.get("reason") or f"no adapter '{st['name']}'", "NotFoundError", "name")
        if st["status"] == "refused":
            return error(422, st.get("reason") or "refused", "UnprocessableEntityError", "name")
        return JSONResponse(st)

    @router.get(ADMIN_PREFIX)
    async def list_adapters(request: Request):
        tenant = request_info(request.scope).tenant
        res = await residency.fetch(swapper.engine)
        if tenant is not None:
            return JSONResponse({"object": "list", "data": residency.rows(
                [s for s in store.status() if tenant.allows(s["name"])], res)})
        return JSONResponse({"object": "list", "adapters_dir": str(store.root),
                             "data": residency.rows(store.status(), res),
                             "engine_capacity": res["capacity"] if res else None,
                             "retired_not_yet_freed": store.retired_count(),
                             "engine_lora_ids": sorted(await swapper.engine.list_loras())})  # what vLLM holds

    @router.post(ADMIN_PREFIX + "/{name}/load")
    async def load(name: str, request: Request):
        return refused(request, name) or answer(await swapper.load(name))

    @router.post(ADMIN_PREFIX + "/{name}/reload")
    async def reload(name: str, request: Request):
        return refused(request, name) or answer(await swapper.load(name, force=True))

    @router.post(ADMIN_PREFIX + "/{name}/unload")
    async def unload(name: str, request: Request):
        if (resp := refused(request, name)) is not None:
            return resp
        if name not in store.entries:
            return error(404, f"no adapter '{name}'", "NotFoundError", "name")
        return JSONResponse(await swapper.unload(name))

    @router.post("/v1/load_lora_adapter")
    async def vllm_load(request: Request):
        """vLLM's route, as the Gateway API Inference Extension's LoRA sidecar and AIBrix drive it:
        {lora_name, lora_path}; lora_path must be the folder DIR/<lora_name> (absolute, or relative to DIR/).
        Load = serve a new version from that folder if it is new or changed (idempotent otherwise)."""
        name, why = _vllm_body(await request.body(), store.root, need_path=True)
        if why is not None:
            return error(400, why, "BadRequestError", "lora_path" if name else "lora_name")
        if (resp := refused(request, name)) is not None:
            return resp
        st = await swapper.load(name)
        if st["status"] in ("missing", "refused"):
            return answer(st)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @router.post("/v1/unload_lora_adapter")
    async def vllm_unload(request: Request):
        """vLLM's route: {lora_name}; stop serving it until it is loaded again (the folder stays)."""
        name, why = _vllm_body(await request.body(), store.root, need_path=False)
        if why is not None:
            return error(400, why, "BadRequestError", "lora_name")
        if (resp := refused(request, name)) is not None:
            return resp
        if name not in store.entries:
            return error(404, f"no adapter '{name}'", "NotFoundError", "lora_name")
        await swapper.unload(name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    @router.get("/health/details")
    async def health_details():
        statuses = [s["status"] for s in store.status()]
        return JSONResponse({"engine": "dead" if getattr(swapper.engine, "errored", False) else "ok",
                             "adapters": {k: statuses.count(k) for k in sorted(set(statuses))},
                             "private_copies": private_copies(swapper),
                             "watcher": {"file_events": swapper.events_live, "passes": swapper.passes,
                                         "partial_passes": swapper.partial_passes},
                             "keys": keys.status() if keys is not None else None})

    return router


def private_copies(swapper) -> dict:
    """Where the served copies live: files hard-linked to an earlier copy instead of copied, free bytes on that
    disk and the floor kept free (--min-free-disk-mb)."""
    try:
        free = shutil.disk_usage(swapper.publish_root).free
    except OSError:
        free = None
    return {"files_linked": swapper.copies.linked, "disk_free_bytes": free, "kept_free_bytes": swapper.min_free_disk}


def _vllm_body(body: bytes, root, need_path: bool) -> tuple[str | None, str | None]:
    """(lora_name, None) for a vLLM load/unload body whose lora_path (when given or needed) is DIR/<lora_name>,
    else (lora_name or None, why not). Paths are resolved (symlinks, `..`) before the rule is checked."""
    obj = json_object(body)
    name = obj.get("lora_name") if obj is not None else None
    if not isinstance(name, str) or not NAME_RE.match(name):
        return None, ("lora_name must be an adapter folder name ([A-Za-z0-9][A-Za-z0-9._-]{0,63}) "
                      "in a JSON object body")
    path = obj.get("lora_path")
    if path is None and not need_path:
        return name, None
    rule = (f"lora_path must be the folder <adapters dir>/{name} (absolute, or relative to the adapters folder); "
            "adapters are only ever read from --adapters")
    if not isinstance(path, str) or not path or "\0" in path:
        return name, rule
    p = Path(path) if Path(path).is_absolute() else Path(root) / path
    try:
        ok = p.resolve() == (Path(root) / name).resolve() and (Path(root) / name).resolve().parent == \
            Path(root).resolve()
    except (OSError, RuntimeError, ValueError):
        ok = False
    return name, None if ok else f"{rule}; got {path[:200]!r}"


def install(app: FastAPI, swapper: HotSwapper, api_key: str | None, admin_key: str | None,
            max_body_bytes: int = 0, metrics_key: str | None = None, keys=None, audit=None,
            validation_wait: float = 60.0) -> None:
    """Wire the store into vLLM's app (before it starts serving). keys: tenancy.KeysFile (--keys) or None;
    audit: audit.AuditLog (--audit-log) or None; validation_wait: seconds a request waits for its folder's
    verdict while it is still being validated."""
    models = HotSwapModels.adopt(app.state.openai_serving_models, swapper.store)
    swapper.store.on_forget = metrics.forget          # forgotten names leave /metrics too (bounded series)
    app.include_router(admin_router(swapper, keys))
    # vLLM's build_app already built the middleware stack (its SageMaker bootstrap does), so insert ours as the
    # outermost layers and rebuild it, as that bootstrap itself does.
    app.user_middleware.insert(0, Middleware(AdmissionMiddleware, models=models, swapper=swapper,
                                                  wait_s=validation_wait))
    if keys is not None:
        from .limits import Limiter
        from .tenancy import TenantMiddleware
        app.user_middleware.insert(0, Middleware(TenantMiddleware, models=models, limiter=Limiter()))
    app.user_middleware.insert(0, Middleware(AuthMiddleware, api_key=api_key, admin_key=admin_key,
                                             metrics_key=metrics_key, keys=keys))
    app.user_middleware.insert(0, Middleware(BodyLimitMiddleware, max_bytes=max_body_bytes))  # before anything reads
    if audit is not None:
        from .audit import AuditMiddleware
        app.user_middleware.insert(0, Middleware(AuditMiddleware, log=audit))
    app.middleware_stack = app.build_middleware_stack()
