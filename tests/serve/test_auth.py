"""Auth: AuthMiddleware alone (fast, no engine) and over HTTP on the shared session server.

  * with --api-key, every route vLLM's app serves (enumerated from its own /openapi.json) except /health,
    /metrics, /ping, /version answers 401 without the key;
  * with --admin-key, /v1/adapters* needs exactly that key: the inference key is not enough (nor is the admin
    key an inference key), and path spellings that might dodge the prefix check never reach an admin route;
  * keys are compared as SHA-256 digests with hmac.compare_digest (constant time, equal lengths), never with ==;
  * with --keys, a tenant's key opens the inference routes as that tenant, the API key stays a key without a tenant,
    a tenant admin key opens only its own admin routes (403 elsewhere), and with no --api-key every other key is
    a 401 (tenants are the only way in);
  * no key, right or wrong, appears in the server's log;
  * keys from HYLORADA_API_KEY / HYLORADA_ADMIN_KEY (how the shared server gets them) guard a running server and
    are on no process's command line; keys given as flags (test_startup_adapters.py's server) guard it too.
"""
from __future__ import annotations

import asyncio
import inspect
import socket
import uuid
from pathlib import Path

import httpx
import pytest

from bench.proc import session_pids

from .conftest import ADMIN_KEY, API_KEY

OPEN = {"/health", "/metrics", "/ping", "/version"}


def call(mw, path: str, auth: bytes | None) -> int:
    headers = [(b"authorization", auth)] if auth is not None else []
    sent = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(msg):
        sent.append(msg)

    async def receive():
        return {"type": "http.request", "body": b""}

    mw.app = app
    asyncio.run(mw({"type": "http", "method": "POST", "path": path, "headers": headers}, receive, send))
    return sent[0]["status"]


def test_middleware_routes_and_keys():
    from hylorada_serve.auth import AuthMiddleware

    both = AuthMiddleware(None, api_key="k-api", admin_key="k-admin")
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/models", "/tokenize", "/v1/responses", "/docs"):
        assert call(both, path, None) == 401
        assert call(both, path, b"Bearer k-admin") == 401          # the admin key is not an inference key
        assert call(both, path, b"bearer k-api") == 200
        assert call(both, path, b"Basic k-api") == 401
        assert call(both, path, b"Bearer k-ap") == 401
    for path in ("/v1/adapters", "/v1/adapters/x/reload"):
        assert call(both, path, b"Bearer k-api") == 401            # the inference key is not enough
        assert call(both, path, b"Bearer k-admin") == 200
    for path in OPEN:
        assert call(both, path, None) == 200
    api_only = AuthMiddleware(None, api_key="k-api", admin_key=None)
    assert call(api_only, "/v1/adapters", b"Bearer k-api") == 200   # no admin key: the API key guards admin too
    assert call(api_only, "/v1/adapters", None) == 401
    assert call(AuthMiddleware(None, None, None), "/v1/completions", None) == 200


def test_tenant_keys(tmp_path):
    from types import SimpleNamespace

    from hylorada_serve.auth import AuthMiddleware, request_info
    from hylorada_serve.keys import digest_hex, parse

    table = parse(f'[tenants.team-a]\nkeys = ["{digest_hex("k-a")}"]\nadapters = ["team-a-*"]\n'
                  f'[tenants.ops]\nkeys = ["{digest_hex("k-ops")}"]\nadapters = ["team-a-*"]\nadmin = true\n')
    keys = SimpleNamespace(table=table)
    seen = []

    def who(mw, path, auth, method="POST"):
        async def app(scope, receive, send):
            seen.append((request_info(scope).who, request_info(scope).tenant))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        sent = []

        async def send(msg):
            sent.append(msg)

        async def receive():
            return {"type": "http.request", "body": b""}
        mw.app = app
        scope = {"type": "http", "method": method, "path": path,
                 "headers": [(b"authorization", auth)] if auth else []}
        asyncio.run(mw(scope, receive, send))
        return sent[0]["status"]

    for api in ("k-api", None):
        mw = AuthMiddleware(None, api_key=api, admin_key="k-admin", keys=keys)
        assert who(mw, "/v1/chat/completions", b"Bearer k-a") == 200 and seen[-1][0] == "team-a"
        assert seen[-1][1].name == "team-a"
        assert who(mw, "/v1/models", b"Bearer k-ops", "GET") == 200 and seen[-1][0] == "ops"
        assert who(mw, "/v1/chat/completions", b"Bearer k-b") == 401
        assert who(mw, "/v1/chat/completions", None) == 401             # --keys: no open door, even with no API key
        assert who(mw, "/v1/chat/completions", b"Bearer k-admin") == 401
        assert who(mw, "/v1/adapters", b"Bearer k-admin", "GET") == 200 and seen[-1] == ("admin", None)
        assert who(mw, "/v1/adapters", b"Bearer k-a", "GET") == 403      # a tenant, not an admin one
        assert who(mw, "/v1/adapters/team-a-x/reload", b"Bearer k-a") == 403
        assert who(mw, "/v1/adapters", b"Bearer k-ops", "GET") == 200 and seen[-1][0] == "ops"
        for path in ("/v1/adapters/team-a-x/load", "/v1/adapters/team-a-x/reload", "/v1/adapters/x/unload"):
            assert who(mw, path, b"Bearer k-ops") == 200                  # own names: checked by the route itself
        assert who(mw, "/health/details", b"Bearer k-ops", "GET") == 403
        assert who(mw, "/v1/adapters/team-a-x/load", b"Bearer k-ops", "GET") == 403
        assert who(mw, "/v1/adapters/team-a-x/other", b"Bearer k-ops") == 403
        assert who(mw, "/health/details", b"Bearer k-admin", "GET") == 200
    mw = AuthMiddleware(None, api_key="k-api", admin_key=None, keys=keys)
    assert who(mw, "/v1/completions", b"Bearer k-api") == 200 and seen[-1] == ("api", None)
    assert who(mw, "/v1/completions", b"Bearer ") == 401 and who(mw, "/v1/completions", b"Bearer") == 401
    assert who(mw, "/v1/adapters", b"Bearer k-api", "GET") == 200 and seen[-1] == ("admin", None)


def test_keys_compared_in_constant_time(monkeypatch):
    import hylorada_serve.auth as app_mod

    calls = []
    real = app_mod.hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(app_mod.hmac, "compare_digest", spy)
    mw = app_mod.AuthMiddleware(None, api_key="k-api", admin_key="k-admin")
    for token in (b"Bearer x", b"Bearer " + b"y" * 10_000, b"Bearer k-api", b"Bearer "):
        call(mw, "/v1/completions", token)
    assert len(calls) == 4 and all(a == b == 32 for a, b in calls)   # digests: equal length whatever was sent
    src = inspect.getsource(app_mod.AuthMiddleware.__call__)
    assert "compare_digest" in src and "token ==" not in src and "== self." not in src


@pytest.mark.vllm
def test_every_non_open_route_needs_the_api_key(server):
    spec = httpx.get(server.url + "/openapi.json", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30).json()
    checked = 0
    for path, ops in spec["paths"].items():
        if path in OPEN:
            continue
        url = server.url + path.replace("{name}", "demo-lora").replace("{", "").replace("}", "")
        for method in ops:
            r = httpx.request(method.upper(), url, timeout=30)
            assert r.status_code == 401, (method, path, r.status_code)
            checked += 1
    assert checked >= 10 and "/v1/completions" in spec["paths"] and "/v1/adapters" in spec["paths"]


@pytest.mark.vllm
def test_admin_routes_need_the_admin_key(server):
    api, admin = {"Authorization": f"Bearer {API_KEY}"}, {"Authorization": f"Bearer {ADMIN_KEY}"}
    for method, path in (("GET", "/v1/adapters"), ("POST", "/v1/adapters/demo-lora/reload"),
                         ("POST", "/v1/adapters/demo-lora/unload"), ("POST", "/v1/adapters/demo-lora/load")):
        assert httpx.request(method, server.url + path, headers=api, timeout=30).status_code == 401
        assert httpx.request(method, server.url + path, timeout=30).status_code == 401
    assert httpx.get(server.url + "/v1/adapters", headers=admin, timeout=30).status_code == 200
    r = httpx.post(server.url + "/v1/completions", headers=admin, timeout=30,
                   json={"model": "demo-lora", "prompt": "x", "max_tokens": 1})
    assert r.status_code == 401


def raw_get(server, path: str, key: str) -> bytes:
    """An HTTP request with the path exactly as written (clients would normalise dot segments)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@pytest.mark.vllm
@pytest.mark.parametrize("path", ["//v1/adapters", "/v1//adapters", "/V1/adapters", "/v1/%61dapters",
                                  "/metrics/../v1/adapters", "/health/../v1/adapters", "/v1/./adapters",
                                  "/v1/models/../adapters", "/v1/adapters/", "/v1/adapters?x=1", "/v1/adapters#"])
def test_path_spellings_do_not_dodge_the_admin_key(server, path):
    resp = raw_get(server, path, API_KEY)                 # the inference key only
    assert resp.startswith(b"HTTP/1.1 ") and b'"adapters_dir"' not in resp, (path, resp[:300])


@pytest.mark.vllm
def test_no_key_is_ever_logged(server):
    marker = "wrong-" + uuid.uuid4().hex
    for key in (marker, API_KEY, ADMIN_KEY):
        for path in ("/v1/completions", "/v1/adapters", "/v1/models"):
            httpx.post(server.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=30,
                       json={"model": "demo-lora", "prompt": "x", "max_tokens": 1})
    log = server.log.read_text(errors="replace")
    for secret in (marker, API_KEY, ADMIN_KEY):
        assert secret not in log


@pytest.mark.vllm
def test_vllm_lora_routes_need_the_admin_key_and_take_no_path_outside_the_folder(server):
    """vLLM's own path-taking /v1/load_lora_adapter stays off (VLLM_ALLOW_RUNTIME_LORA_UPDATING=0, launch.py); ours,
    at the same paths (the router contract, test_router_contract.py), are admin routes that read only DIR/<name>."""
    api, admin = {"Authorization": f"Bearer {API_KEY}"}, {"Authorization": f"Bearer {ADMIN_KEY}"}
    body = {"lora_name": "sneaked-in", "lora_path": str(server.spare / "demo-lora")}
    for route in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        r = httpx.post(server.url + route, headers=api, json=body, timeout=30)
        assert r.status_code == 401, (route, r.status_code, r.text[:200])            # an admin route
    r = httpx.post(server.url + "/v1/load_lora_adapter", headers=admin, json=body, timeout=30)
    assert r.status_code == 400 and "lora_path must be the folder" in r.text, r.text  # outside DIR/: refused
    models = httpx.get(server.url + "/v1/models", headers=api, timeout=30).json()["data"]
    assert "sneaked-in" not in {m["id"] for m in models}


@pytest.mark.vllm
def test_env_keys_guard_the_running_server_and_stay_off_the_command_line(server):
    assert server.keys == "env"                                    # the shared server got its keys from the environment
    for pid in session_pids(server.proc.pid):                       # API server, engine core, workers
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert API_KEY.encode() not in cmdline and ADMIN_KEY.encode() not in cmdline, (pid, cmdline[:300])
    url = server.url
    assert httpx.get(url + "/v1/models", timeout=30).status_code == 401
    assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30).status_code == 200
    assert httpx.get(url + "/v1/adapters", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30).status_code == 401
    assert httpx.get(url + "/v1/adapters", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                     timeout=30).status_code == 200
