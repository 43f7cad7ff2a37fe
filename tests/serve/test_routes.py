"""Every route of vLLM's app is classified (hylorada_serve/routes.py), and every route that reaches the engine with
an adapter is pinned to its version.

  * vLLM's app, built the way launch.py builds it (its parser, our argv, build_app), plus our admin routes, has
    exactly the routes of ROUTES, with the same methods: a route added by a vLLM upgrade fails here until it is
    classified (and until then the middleware answers 404 for it);
  * the running server's /openapi.json lists no route outside the table;
  * hot-swap under streams on /v1/messages, /v1/responses, /invocations (SageMaker header) and
    /v1/chat/completions/batch: the adapter is reloaded (a new version each time, as `touch` on its folder did) while 4 clients stream;
    the server stays up, every request is a 200 naming the version it ran on (before: `adapter folder does not
    exist` in the worker, EngineDeadError, the server exited);
  * /invocations with X-Amzn-SageMaker-Adapter-Identifier runs that adapter (before: the base), an unknown one 404;
  * OFF routes (/scale_elastic_ep, ...) are 404 with the API key (before: vLLM ran them), 401 without.
"""
from __future__ import annotations

import shutil
import threading
import time
from types import SimpleNamespace

import httpx
import pytest

from hylorada_serve import routes

from .conftest import ADMIN_KEY, API_KEY

NAME = "routes-lora"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def built_routes(tmp_path) -> set[tuple[str, tuple[str, ...]]]:
    from starlette.routing import Mount
    from vllm.entrypoints.launchers.app import build_app

    from hylorada_serve import launch
    from hylorada_serve.app import admin_router
    from hylorada_serve.config import ServeConfig

    launch.set_process_env()
    (tmp_path / "adapters").mkdir()
    args = launch.vllm_args(ServeConfig(base=str(tmp_path / "base"), adapters=str(tmp_path / "adapters")))
    app = build_app(args, ("generate",), None)
    app.include_router(admin_router(SimpleNamespace(store=None)))
    got = set()
    for r in app.routes:
        path = r.path + "/*" if isinstance(r, Mount) else r.path
        got.add((path, tuple(sorted(getattr(r, "methods", None) or ()))))
    return got


def test_every_vllm_route_is_classified(tmp_path):
    got = built_routes(tmp_path)
    want = {(p, tuple(sorted(r.methods))) for p, r in routes.ROUTES.items()}
    by_path: dict[str, set] = {}
    for p, m in got:
        by_path.setdefault(p, set()).update(m)
    got_merged = {(p, tuple(sorted(m))) for p, m in by_path.items()}     # /ping: one route per method
    assert got_merged - want == set(), "routes of vLLM's app missing from hylorada_serve/routes.py"
    assert want - got_merged == set(), "routes.py lists routes vLLM's app no longer has"
    for path in ("/v1/messages", "/v1/responses", "/invocations", "/v1/chat/completions/batch"):
        assert routes.policy(path) == routes.ADMIT
    assert routes.policy("/scale_elastic_ep") == routes.OFF
    assert routes.policy("/sleep") == routes.OFF               # not classified: off
    assert routes.policy("/v1/adapters/x/load") == routes.ADMIN and routes.policy("/metrics/x") == routes.OPEN


def test_routes_table_is_documented():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    missing = [p for p in routes.ROUTES if f"`{p}`" not in text]
    assert not missing, f"docs/serving.md's route table lacks {missing}"


def test_admission_covers_every_admit_route():
    import asyncio
    from contextlib import contextmanager

    from hylorada_serve.app import AdmissionMiddleware

    seen = []

    class Models:
        base_model_paths = [SimpleNamespace(name="base")]

        @contextmanager
        def admitted(self):
            seen.append(True)
            yield SimpleNamespace(used=None)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def noop(msg):
        pass

    async def receive():
        return {"type": "http.request", "body": b"{}"}

    mw = AdmissionMiddleware(app, Models())
    for path, r in routes.ROUTES.items():
        seen.clear()
        asyncio.run(mw({"type": "http", "method": "POST", "path": path, "headers": []}, receive, noop))
        assert bool(seen) == (r.policy == routes.ADMIT), path


def test_sagemaker_header_becomes_model():
    import asyncio
    import json

    from hylorada_serve.app import _with_model

    async def go(body: bytes):
        parts = [body[:3], body[3:]]

        async def receive():
            return {"type": "http.request", "body": parts.pop(0), "more_body": bool(parts)}
        scope, rec = await _with_model({"headers": [(b"content-length", b"1")]}, receive, "demo-lora")
        return scope, await rec()

    scope, msg = asyncio.run(go(b'{"model": "base", "prompt": "x"}'))
    assert json.loads(msg["body"]) == {"model": "demo-lora", "prompt": "x"}
    assert dict(scope["headers"])[b"content-length"] == str(len(msg["body"])).encode()
    assert asyncio.run(go(b"[1, 2]"))[1]["body"] == b"[1, 2]"          # not an object: vLLM's 400


# ---------------------------------------------------------------------------------------------- on the server

def add_adapter(server, http) -> None:
    shutil.copytree(server.spare / "demo-lora", server.adapters / NAME)
    deadline = time.time() + 30
    while time.time() < deadline:
        if NAME in {m["id"] for m in http.get("/v1/models").json()["data"]}:
            return
        time.sleep(0.2)
    pytest.fail(f"{NAME} not served within 30 s:\n{server.log_tail()}")


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        try:
            add_adapter(server, c)
            yield c
        finally:
            shutil.rmtree(server.adapters / NAME, ignore_errors=True)


STREAMS = {
    "/v1/messages": lambda m: ({"model": m, "max_tokens": 24, "stream": True,
                                "messages": [{"role": "user", "content": "tell me"}]}, {}),
    "/v1/responses": lambda m: ({"model": m, "input": "tell me", "max_output_tokens": 24, "stream": True}, {}),
    "/invocations": lambda m: ({"prompt": "tell me", "max_tokens": 24, "stream": True, "ignore_eos": True},
                               {"X-Amzn-SageMaker-Adapter-Identifier": m}),
    "/v1/chat/completions/batch": lambda m: ({"model": m, "max_tokens": 24, "ignore_eos": True,
                                              "messages": [[{"role": "user", "content": "a"}],
                                                           [{"role": "user", "content": "b"}]]}, {}),
}


@pytest.mark.vllm
@pytest.mark.parametrize("path", list(STREAMS))
def test_hot_swap_under_unpinned_routes_keeps_the_engine_alive(server, http, path):
    results, stop = [], threading.Event()

    def client():
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
            for _ in range(200):                                        # bounded in count ...
                if stop.is_set():
                    return
                body, extra = STREAMS[path](NAME)
                with c.stream("POST", path, json=body, headers=extra) as r:
                    data = b"".join(r.iter_bytes())
                results.append((r.status_code, r.headers.get("x-hylorada-adapter"),
                                r.headers.get("x-hylorada-adapter-version"), data[:200]))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        for _ in range(4):                                              # ... and in time
            time.sleep(1.0)
            r = httpx.post(f"{server.url}/v1/adapters/{NAME}/reload", headers=admin, timeout=60)
            assert r.status_code == 200, r.text                         # a new version; the old one is freed
            #                                                             once no admitted request holds it
    finally:
        # Keep the clients going until a request admitted after a swap has come back (or 60 s have
        # passed), then stop: on CI the clients had used up a small request budget before the swaps landed.
        deadline = time.time() + 60
        while time.time() < deadline and len({ver for *_, ver, _ in results}) < 2 \
                and any(t.is_alive() for t in threads):
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200, server.log_tail()
    assert server.proc.poll() is None, server.log_tail()
    assert results and all(code == 200 and name == NAME and ver for code, name, ver, _ in results), results[:5]
    assert len({ver for *_, ver, _ in results}) >= 2, "the swaps never landed while requests ran"
    assert "AdapterError" not in server.log.read_text(errors="replace")


@pytest.mark.vllm
def test_sagemaker_adapter_header_runs_that_adapter(server, http):
    prompt = {"prompt": [5, 77, 140, 33, 9], "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    want = http.post("/v1/completions", json={**prompt, "model": NAME}).json()["choices"][0]["text"]
    base = http.post("/v1/completions", json={**prompt, "model": server.base.name}).json()["choices"][0]["text"]
    assert want != base                                     # the adapter changes the answer, so the check means it
    r = http.post("/invocations", json=prompt, headers={"X-Amzn-SageMaker-Adapter-Identifier": NAME})
    assert r.status_code == 200 and r.headers["x-hylorada-adapter"] == NAME, r.text
    assert r.json()["choices"][0]["text"] == want
    r = http.post("/invocations", json={**prompt, "model": server.base.name},
                  headers={"X-Amzn-SageMaker-Adapter-Identifier": "no-such-adapter"})
    assert r.status_code == 404, r.text


@pytest.mark.vllm
@pytest.mark.parametrize("path", [p for p, r in routes.ROUTES.items() if r.policy == routes.OFF])
def test_off_routes_are_404_even_with_the_api_key(server, path):
    assert httpx.post(server.url + path, json={}, timeout=30).status_code == 401
    r = httpx.post(server.url + path, json={"new_data_parallel_size": 2}, headers=AUTH, timeout=30)
    assert r.status_code == 404 and "not served by hylorada-serve" in r.json()["error"]["message"], r.text
    r = httpx.post(server.url + path, json={}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    assert r.status_code == 401                              # the admin key is not an inference key


@pytest.mark.vllm
def test_running_servers_openapi_has_no_unclassified_route(server):
    spec = httpx.get(server.url + "/openapi.json", headers=AUTH, timeout=30).json()
    assert set(spec["paths"]) - set(routes.ROUTES) == set()


@pytest.mark.vllm
def test_background_responses_are_refused(server):
    r = httpx.post(server.url + "/v1/responses", headers=AUTH, timeout=30,
                   json={"model": "demo-lora", "input": "x", "max_output_tokens": 2, "background": True, "store": True})
    assert r.status_code == 400, r.text
