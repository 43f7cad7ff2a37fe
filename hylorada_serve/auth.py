"""Who is calling: the API key, the admin key, a tenant's key (`--keys`), or nobody — and may they call this route.

AuthMiddleware applies the route table (routes.py): OPEN routes need no key; ADMIN ones (and anything under
/v1/adapters) the admin key (without one, the API key; a tenant key whose tenant has `admin = true` on its own
adapters' routes, else 403); every other path the API key or a tenant's key; then OFF and unclassified paths answer
404. With no key configured and no `--keys`, every route is open (as vLLM's server is without --api-key). A request
with more than one Authorization header is a 400. /metrics without `metrics_key` (when one is set; with `--keys`,
always, unless the metrics key is sent) loses the series that name adapters or tenants (metrics.redact): with tenants,
one tenant must not learn another's adapter names from them.

Keys: the presented token is hashed once (SHA-256, 32 bytes whatever was sent) and the digest compared with
hmac.compare_digest (the API / admin key) or looked up by digest (keys.KeyTable: the lookup's time depends on the
digest, which nobody can steer toward a stored one). No key is ever logged.

What was decided is left in the request's `RequestInfo` (scope["hylorada"]): who called (for the audit log and the
per-tenant metrics), the tenant (for its scope and limits, tenancy.py), the adapter a request named.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from . import metrics, routes
from .asgi import error
from .keys import Tenant

ADMIN_PREFIX = "/v1/adapters"
SCOPE_KEY = "hylorada"


@dataclass
class RequestInfo:
    who: str = "-"                  # "api" | "admin" | a tenant's name | "-" (no valid key, or none needed)
    tenant: Tenant | None = None    # set for a tenant's key
    adapter: str | None = None      # the adapter the request named (AdmissionMiddleware / the admin routes)
    reason: str | None = None       # why it was refused, when it was (audit log)
    counter: object | None = None   # metrics.TokenCounter of a 200 on an ADMIT route (AdmissionMiddleware)


def request_info(scope) -> RequestInfo:
    """The request's RequestInfo, created on first use (the same object in every layer: scopes copied with
    {**scope} keep it)."""
    info = scope.get(SCOPE_KEY)
    if info is None:
        info = scope[SCOPE_KEY] = RequestInfo()
    return info


def tenant_admin_path(path: str, method: str) -> bool:
    """The admin routes a tenant admin may call (on its own adapters: checked by the routes themselves)."""
    if path == ADMIN_PREFIX:
        return method == "GET"
    if path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        return method == "POST"
    parts = path[len(ADMIN_PREFIX) + 1:].split("/") if path.startswith(ADMIN_PREFIX + "/") else []
    return method == "POST" and len(parts) == 2 and parts[1] in ("load", "reload", "unload")


class AuthMiddleware:
    def __init__(self, app, api_key: str | None, admin_key: str | None, metrics_key: str | None = None,
                 keys=None):
        self.app, self.keys = app, keys           # keys: tenancy.KeysFile (its .table is current) or None
        self.api, self.admin, self.metrics = _digest(api_key), _digest(admin_key), _digest(metrics_key)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") == "OPTIONS":
            return await self.app(scope, receive, send)
        path, info = scope["path"], request_info(scope)
        auths = [v for k, v in scope.get("headers") or [] if k == b"authorization"]
        if len(auths) > 1:
            info.reason = "two Authorization headers"
            return await error(400, "more than one Authorization header", "BadRequestError")(scope, receive, send)
        token = (_bearer(auths[0]) if auths else None) or None     # an empty token is no key
        given = hashlib.sha256(token or b"").digest()          # 32 bytes whatever was sent: constant-time compare
        matches = lambda need: hmac.compare_digest(given, need) and token is not None   # noqa: E731
        where = routes.policy(path)
        if where == routes.OPEN:
            if path.startswith("/metrics") and (self.metrics is None and self.keys is not None or
                                                self.metrics is not None and not matches(self.metrics)):
                return await _redacted_metrics(self.app, scope, receive, send)   # names: metrics key only
            return await self.app(scope, receive, send)
        table = self.keys.table if self.keys is not None else None
        tenant = table.tenant_for(given) if table is not None and token is not None else None
        if where == routes.ADMIN or path.startswith(ADMIN_PREFIX):
            need = self.admin if self.admin is not None else self.api
            if need is not None and matches(need):
                info.who = "admin"
            elif tenant is not None:
                info.who, info.tenant = tenant.name, tenant
                if not (tenant.admin and tenant_admin_path(path, scope.get("method", ""))):
                    info.reason = "not an admin key"
                    return await error(403, "this key may not use this admin route (a tenant admin may list, load, "
                                            "reload and unload its own adapters)", "PermissionDeniedError"
                                       )(scope, receive, send)
            elif need is not None or table is not None:
                info.reason = "missing or wrong key"
                return await error(401, "missing or wrong admin key (Authorization: Bearer ...)",
                                   "AuthenticationError")(scope, receive, send)
        elif self.api is not None and matches(self.api):
            info.who = "api"
        elif tenant is not None:
            info.who, info.tenant = tenant.name, tenant
        elif self.api is not None or table is not None:
            info.reason = "missing or wrong key"
            return await error(401, "missing or wrong API key (Authorization: Bearer ...)",
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
