"""The audit log (hylorada_serve/audit.py): one JSON line per admin action and per refused request, with who, route,
adapter and outcome, never a key, a prompt or a completion; rotated by size with a bounded number of files."""
from __future__ import annotations

import asyncio
import json

from hylorada_serve.audit import AuditLog, AuditMiddleware
from hylorada_serve.auth import request_info

SECRET_KEY, PROMPT, COMPLETION = "sk-very-secret-key", "the secret prompt", "the secret completion"


def run(mw, path, status, who="team-a", adapter=None, reason=None):
    async def app(scope, receive, send):
        info = request_info(scope)
        info.who, info.adapter, info.reason = who, adapter, reason
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": COMPLETION.encode()})

    async def receive():
        return {"type": "http.request", "body": json.dumps({"prompt": PROMPT}).encode()}

    async def send(msg):
        pass

    mw.app = app
    headers = [(b"authorization", f"Bearer {SECRET_KEY}".encode())]
    asyncio.run(mw({"type": "http", "method": "POST", "path": path, "headers": headers}, receive, send))


def test_admin_actions_and_refusals_are_logged_and_nothing_secret(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    mw = AuditMiddleware(None, log)
    run(mw, "/v1/chat/completions", 200)                                       # served: not logged
    run(mw, "/v1/chat/completions", 404, adapter="team-b-x")
    run(mw, "/v1/completions", 429, reason="tokens_per_minute")
    run(mw, "/v1/models", 401, who="-")
    run(mw, "/v1/adapters/team-a-x/reload", 200, who="admin")
    run(mw, "/v1/adapters/team-b-x/unload", 404, who="team-a")
    log.close()
    text = (tmp_path / "audit.log").read_text()
    lines = [json.loads(x) for x in text.splitlines()]
    assert [(x["tenant"], x["route"], x["adapter"], x["outcome"], x["reason"]) for x in lines] == [
        ("team-a", "/v1/chat/completions", "team-b-x", 404, "not found"),
        ("team-a", "/v1/completions", None, 429, "tokens_per_minute"),
        ("-", "/v1/models", None, 401, "missing or wrong key"),
        ("admin", "/v1/adapters/team-a-x/reload", "team-a-x", 200, None),
        ("team-a", "/v1/adapters/team-b-x/unload", "team-b-x", 404, "not found")]
    assert all(x["method"] == "POST" and x["time"].endswith("Z") for x in lines)
    for secret in (SECRET_KEY, PROMPT, COMPLETION, "sk-"):
        assert secret not in text


def test_rotation_by_size_keeps_a_bounded_number_of_files(tmp_path):
    log = AuditLog(tmp_path / "audit.log", max_bytes=4096, backups=2)
    mw = AuditMiddleware(None, log)
    for i in range(200):
        run(mw, f"/v1/adapters/a{i}/load", 200, who="admin")
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.log", "audit.log.1", "audit.log.2"], files
    assert all((tmp_path / f).stat().st_size <= 4096 for f in files)
    last = json.loads((tmp_path / "audit.log").read_text().splitlines()[-1])
    assert last["adapter"] == "a199"
