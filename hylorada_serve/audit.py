"""`--audit-log FILE`: one JSON line per admin action and per refused request, rotated by size.

    {"time": "2026-12-02T03:40:00.123Z", "tenant": "team-a", "route": "/v1/chat/completions", "method": "POST",
     "adapter": "team-b-x", "outcome": 404, "reason": "not found"}

`tenant`: the tenant's name, "admin" (the admin key), "api" (the API key), or "-" (no valid key). `adapter`: the
adapter the request named or acted on (null when none). `outcome`: the HTTP status. Refused: 401, 403, 404, 413 and
429 answers. Never written: a key (or its digest), a prompt, a completion, a request body. The file rotates at
`--audit-log-mb` MiB into FILE.1 ... FILE.{backups} (logging's RotatingFileHandler); writes happen on the event loop
and are a few hundred bytes each.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import time
from pathlib import Path

from . import routes
from .auth import ADMIN_PREFIX, request_info

REFUSED = frozenset({401, 403, 404, 413, 429})


class AuditLog:
    def __init__(self, path: str | Path, max_bytes: int = 16 << 20, backups: int = 5):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._log = logging.getLogger(f"hylorada_serve.audit.{id(self):x}")
        self._log.propagate, self._log.disabled = False, False
        self._log.setLevel(logging.INFO)
        self._handler = logging.handlers.RotatingFileHandler(self.path, maxBytes=int(max_bytes),
                                                             backupCount=int(backups), encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._log.addHandler(self._handler)

    def write(self, tenant: str, route: str, method: str, adapter: str | None, outcome: int,
              reason: str | None = None) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        self._log.info(json.dumps({"time": stamp, "tenant": tenant, "route": route, "method": method,
                                   "adapter": adapter, "outcome": outcome, "reason": reason}))

    def close(self) -> None:
        self._log.removeHandler(self._handler)
        self._handler.close()


REASONS = {401: "missing or wrong key", 403: "forbidden", 404: "not found", 413: "body too large", 429: "limit"}


class AuditMiddleware:
    """Outermost layer (with --audit-log): after each response, one line if it was an admin route or a refusal.
    Who called and why it was refused come from the request's RequestInfo (auth.py, tenancy.py)."""

    def __init__(self, app, log: AuditLog):
        self.app, self.log = app, log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        info, status = request_info(scope), [0]

        async def send_(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_)
        finally:
            path = scope["path"]
            admin = routes.policy(path) == routes.ADMIN or path.startswith(ADMIN_PREFIX)
            if admin or status[0] in REFUSED:
                adapter = info.adapter
                if adapter is None and path.startswith(ADMIN_PREFIX + "/"):
                    adapter = path[len(ADMIN_PREFIX) + 1:].split("/", 1)[0][:64] or None
                self.log.write(info.who, path[:256], scope.get("method", ""), adapter, status[0] or 500,
                               info.reason or REASONS.get(status[0]))
