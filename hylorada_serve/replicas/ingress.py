"""What the one endpoint does with each request (front.py serves it over HTTP): send it to a replica.

    POST with a JSON body naming an adapter in `model` -> Serve's multiplexed routing with that name as the model id
        (a replica holding it, else the least loaded); the base model's name and every other request -> any replica
    GET /metrics -> every replica's, merged with a replica label (merge.py)
    POST /v1/adapters/{name}/load|reload|unload, /v1/load_lora_adapter, /v1/unload_lora_adapter -> every replica
        (each applies it to its own store; the status is the worst)
    GET /v1/replicas -> each replica's port, pid, requests, affinity loads, /v1/models (as the replica's own API
        key sees it) and /v1/adapters (answered only when every replica's /v1/adapters accepted the caller's key:
        the admin key)

An adapter's first request is routed alone: requests for the same adapter that arrive while it is on its way wait
for its answer (and PUSH_S more, while Serve's router learns where it went), so that a burst for a cold adapter
loads it on one replica, not on several (Serve's routing table lags a load by 0.1 s or more).

Auth, tenants, limits and validation stay the replicas' own: the caller's headers travel unchanged. A replica that
cannot be reached before it answers (it died; Ray replaces it) is retried on another for up to retry_s, then 503
with Retry-After; a stream cut after its first byte is not retried (the client retries; docs/scale.md).
Every answer carries x-hylorada-replica (which replica), for adapter requests x-hylorada-affinity: hit | load,
and x-hylorada-retries: N when it was sent N more times because a replica could not answer.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time

import ray
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .merge import combine, merge_metrics
from .replica import ReplicaUnavailable

BROADCAST_POST = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")
ADMIN_ACTIONS = ("/load", "/reload", "/unload")
RETRY_SLEEP_S = 0.5
COLD_WAIT_S = 10.0      # a request for an adapter whose first request is in flight waits at most this for it
PUSH_S = 0.3            # then this long: Serve's replicas push the adapters they hold every 0.1 s
KNOWN_MAX = 100_000
METRICS_TIMEOUT_S = 10.0
DROP_IN = {"host", "content-length", "connection", "transfer-encoding"}
RETRYABLE = tuple(t for t in (ReplicaUnavailable, getattr(ray.exceptions, "RayActorError", None),
                              getattr(ray.exceptions, "ActorUnavailableError", None)) if t is not None)


def _retryable(e: BaseException) -> bool:
    """Ray re-raises an exception from the replica as a RayTaskError that is also an instance of its cause
    (ray.exceptions.RayTaskError.as_instanceof_cause), so ReplicaUnavailable is caught as itself."""
    return isinstance(e, RETRYABLE)


def broadcast_kind(method: str, path: str) -> str | None:
    """Which requests go to every replica: 'metrics', 'replicas', 'admin', or None (routed to one)."""
    if method == "GET" and path == "/metrics":
        return "metrics"
    if method == "GET" and path == "/v1/replicas":
        return "replicas"
    if method == "POST" and (path in BROADCAST_POST or (path.startswith("/v1/adapters/")
                                                         and path.endswith(ADMIN_ACTIONS))):
        return "admin"
    return None


def adapter_of(method: str, headers, body: bytes, base_name: str) -> str:
    """The multiplexed model id: the JSON body's `model` when it names something other than the base; '' else."""
    if method != "POST" or not body or "json" not in (headers.get("content-type") or "json"):
        return ""
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        return ""
    return model if isinstance(model, str) and model and model != base_name else ""


class Ingress:
    def __init__(self, replicas, registry, base_name: str, max_body_bytes: int, retry_s: float = 60.0):
        """replicas: the Replica deployment's handle; registry: the Registry actor's handle (tests: fakes)."""
        self.replicas = replicas
        self.registry = registry
        self.base_name = base_name
        self.max_body_bytes = max_body_bytes
        self.retry_s = retry_s
        self.known: dict[str, None] = {}        # adapters routed before (insertion-ordered, at most KNOWN_MAX)
        self.cold: dict[str, asyncio.Event] = {}    # adapters whose first request is in flight

    async def __call__(self, request: Request) -> Response:
        size = request.headers.get("content-length")
        if self.max_body_bytes and size and size.isdigit() and int(size) > self.max_body_bytes:
            return JSONResponse({"error": {"message": f"request body larger than {self.max_body_bytes} bytes",
                                           "type": "BadRequestError", "code": 413}}, status_code=413)
        body = await request.body()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in DROP_IN]
        method, path, query = request.method, request.url.path, request.url.query
        kind = broadcast_kind(method, path)
        if kind == "metrics":
            return await self._metrics(headers)
        if kind == "replicas":
            return await self._replicas(headers)
        if kind == "admin":
            got = await self._all({"kind": "http", "method": method, "path": path, "headers": headers,
                                   "body": body})
            status, out = combine({t: (r["status"], r.get("body") or json.dumps(r.get("error", "")).encode())
                                   for t, r in got.items()})
            return JSONResponse(out, status_code=status)
        return await self._routed(method, path, query, headers, body, adapter_of(method, request.headers, body,
                                                                                   self.base_name))

    async def _all(self, command: dict, timeout_s: float = 60.0) -> dict:
        got = await self.registry.broadcast.remote(command, timeout_s)
        return got or {"-": {"status": 503, "error": "no replica is registered yet"}}

    async def _metrics(self, headers) -> Response:
        """The replicas that answer within METRICS_TIMEOUT_S, merged (a replica being replaced is left out, not a
        failed scrape); a refusal (401/403: the metrics key) or no answer at all is the status."""
        headers = [(k, v) for k, v in headers if k.lower() != "accept"]     # the text format, not OpenMetrics
        got = await self._all({"kind": "http", "method": "GET", "path": "/metrics", "headers": headers},
                              timeout_s=METRICS_TIMEOUT_S)
        ok = {t: r["body"].decode() for t, r in got.items() if r["status"] == 200}
        refused = [r for r in got.values() if r["status"] in (401, 403)]
        if refused or not ok:
            worst = refused[0] if refused else max(got.values(), key=lambda r: r["status"])
            return Response(worst.get("body") or worst.get("error", "").encode(), status_code=worst["status"])
        return Response(merge_metrics(ok), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def _replicas(self, headers) -> Response:
        stats, adapters = await asyncio.gather(
            self._all({"kind": "stats"}),
            self._all({"kind": "http", "method": "GET", "path": "/v1/adapters", "headers": headers}))
        if "-" in stats:
            return JSONResponse({"error": {"message": "no replica is up yet", "type": "ServiceUnavailableError",
                                           "code": 503}}, status_code=503, headers={"Retry-After": "5"})
        refused = [r for r in adapters.values() if r["status"] in (401, 403)]
        if refused:
            return Response(refused[0].get("body") or b"", status_code=refused[0]["status"],
                            media_type="application/json")
        out = []
        for tag in sorted(stats):
            row = dict(stats[tag].get("body") or {"replica": tag, "error": stats[tag].get("error")})
            r = adapters.get(tag, {"status": 504})
            try:
                row["adapters"] = json.loads(r["body"]) if r["status"] == 200 else {"status": r["status"]}
            except (KeyError, ValueError):
                row["adapters"] = {"status": r["status"]}
            out.append(row)
        return JSONResponse({"replicas": out})

    async def _routed(self, method, path, query, headers, body, model: str) -> Response:
        leader = False
        if model and model not in self.known:
            first = self.cold.get(model)
            if first is None:
                self.cold[model] = first = asyncio.Event()
                leader = True
            else:                                # its first request is on its way to a replica: follow it there
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(first.wait(), COLD_WAIT_S)
        try:
            return await self._send(method, path, query, headers, body, model)
        finally:
            if leader:
                self._learned(model)

    def _learned(self, model: str) -> None:
        """The first request for `model` got its replica's answer (or failed): Serve's router learns that the
        replica holds it within PUSH_S; then the requests that waited go, and find it there."""
        first = self.cold.get(model)

        def release():
            self.known[model] = None                        # known only once the waiters go: a request arriving
            while len(self.known) > KNOWN_MAX:              # meanwhile waits with them
                self.known.pop(next(iter(self.known)))
            self.cold.pop(model, None)
            if first is not None:
                first.set()
        asyncio.get_running_loop().call_later(PUSH_S, release)

    async def _send(self, method, path, query, headers, body, model: str) -> Response:
        deadline = time.monotonic() + self.retry_s
        last, retries = None, 0
        while True:
            gen = self.replicas.options(multiplexed_model_id=model, stream=True).forward.remote(
                method, path, query, headers, body)
            try:
                first = await gen.__anext__()
                break
            except StopAsyncIteration:
                return Response(status_code=502)
            except BaseException as e:                      # noqa: BLE001 — only the retryable kinds loop
                gen.cancel()                                # the client left, or this try failed: stop its work
                if not isinstance(e, Exception) or not _retryable(e):
                    raise
                last = e
                if time.monotonic() > deadline:
                    return JSONResponse({"error": {"message": f"no replica answered in {self.retry_s:g} s "
                                                              f"(last: {str(last).splitlines()[0][:300]})",
                                                   "type": "ServiceUnavailableError", "code": 503}},
                                        status_code=503, headers={"Retry-After": "5"})
                retries += 1
                await asyncio.sleep(RETRY_SLEEP_S)
        extra = {"x-hylorada-replica": first["replica"]}
        if retries:
            extra["x-hylorada-retries"] = str(retries)
        if first["held"] is not None:
            extra["x-hylorada-affinity"] = "hit" if first["held"] else "load"

        async def rest():
            done = False
            try:
                async for chunk in gen:
                    yield chunk
                done = True
            finally:
                if not done:                                # the client went away: the replica stops generating
                    gen.cancel()
        response = StreamingResponse(rest(), status_code=first["status"])
        response.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in first["headers"]
                                if k.lower() not in extra] + [(k.encode(), v.encode()) for k, v in extra.items()]
        return response
