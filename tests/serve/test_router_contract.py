"""The contract Kubernetes routers use with vLLM, kept by hylorada-serve (issue 19, part 1), on the shared server.

  * `/metrics` read as llm-d's endpoint picker reads it: of `vllm:lora_requests_info` the series with the largest
    value, `running_lora_adapters` / `waiting_lora_adapters` split on commas, `max_lora`; while a request for an
    adapter runs, its name — the name clients send, never `name@vN` — is listed as running;
  * `POST /v1/load_lora_adapter {lora_name, lora_path}` and `POST /v1/unload_lora_adapter {lora_name}` driven as the
    Gateway API Inference Extension's LoRA sidecar (and AIBrix) drive vLLM's: admin key only; unload stops serving
    the name (404, gone from /v1/models, the watcher does not bring it back), load serves it again as a new version
    (idempotent when unchanged); a lora_path outside `--adapters` — another folder, `..`, a relative escape, a
    symlink out, another adapter's folder under this name — is a 400 naming the rule and loads nothing.
"""
from __future__ import annotations

import os
import re
import shutil
import threading
import time

import httpx
import pytest

from .conftest import ADMIN_KEY, API_KEY

pytestmark = pytest.mark.vllm
API, ADMIN = {"Authorization": f"Bearer {API_KEY}"}, {"Authorization": f"Bearer {ADMIN_KEY}"}
SERIES = re.compile(r'^vllm:lora_requests_info\{(?P<labels>[^}]*)\} (?P<value>\S+)$')


def lora_info(text: str) -> dict | None:
    """llm-d's extraction: the vllm:lora_requests_info series with the largest value, its labels split."""
    best = None
    for line in text.splitlines():
        m = SERIES.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
            if best is None or float(m["value"]) > best[0]:
                best = (float(m["value"]), labels)
    if best is None:
        return None
    lab = best[1]
    split = lambda v: [x for x in v.split(",") if x]        # noqa: E731
    return {"running": split(lab.get("running_lora_adapters", "")), "waiting": split(lab.get("waiting_lora_adapters",
            "")), "max_lora": int(lab["max_lora"]), "value": best[0]}


def test_running_adapters_carry_client_names(server):
    """Streams for demo-dora run back to back while /metrics is polled: one request of the tiny model can finish
    between two polls (CI saw it: 30 s of polls, never running), so the engine is kept busy until it is seen."""
    stop, codes = threading.Event(), []

    def busy():
        with httpx.Client(base_url=server.url, headers=API, timeout=120) as c:
            for _ in range(200):                                     # bounded; stopped once seen (or 30 s)
                if stop.is_set():
                    return
                with c.stream("POST", "/v1/completions", json={"model": "demo-dora", "prompt": "hello", "n": 8,
                                                                "max_tokens": 400, "ignore_eos": True,
                                                                "stream": True}) as s:
                    codes.append(s.status_code)
                    for _ in s.iter_bytes():
                        if stop.is_set():
                            break

    th = threading.Thread(target=busy, daemon=True)
    th.start()
    seen = []
    try:
        deadline = time.time() + 30
        while time.time() < deadline and th.is_alive():
            info = lora_info(httpx.get(server.url + "/metrics", timeout=10).text)
            if info is not None:
                seen.append(info)
                if "demo-dora" in info["running"]:
                    break
            time.sleep(0.05)
    finally:
        stop.set()
        th.join(60)
    assert codes and set(codes) == {200}, codes
    assert seen and "demo-dora" in seen[-1]["running"], (seen[-3:], server.log_tail(20))
    assert seen[-1]["max_lora"] == 4
    for info in seen:
        assert not any("@v" in n for n in info["running"] + info["waiting"]), info


def test_sidecar_load_and_unload(server):
    name = "router-contract"
    src, folder = server.spare / "demo-lora", server.adapters / name
    shutil.copytree(src, folder)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            def models():
                return {m["id"] for m in c.get("/v1/models", headers=API).json()["data"]}

            def ask():
                return c.post("/v1/completions", headers=API, json={"model": name, "prompt": "hi", "max_tokens": 2})

            body = {"lora_name": name, "lora_path": str(folder)}
            r = c.post("/v1/load_lora_adapter", headers=ADMIN, json=body)       # new: loads it now
            assert r.status_code == 200 and "added successfully" in r.text, r.text
            assert name in models() and ask().status_code == 200
            version = ask().headers["x-hylorada-adapter-version"]
            r = c.post("/v1/load_lora_adapter", headers=ADMIN, json={**body, "lora_path": name})   # relative, again
            assert r.status_code == 200 and ask().headers["x-hylorada-adapter-version"] == version   # unchanged
            assert c.post("/v1/load_lora_adapter", headers=API, json=body).status_code == 401
            assert c.post("/v1/unload_lora_adapter", headers=API, json={"lora_name": name}).status_code == 401

            r = c.post("/v1/unload_lora_adapter", headers=ADMIN, json={"lora_name": name})
            assert r.status_code == 200 and "removed successfully" in r.text
            assert ask().status_code == 404 and name not in models()
            time.sleep(1.0)                                                      # five watcher passes
            assert name not in models()
            r = c.post("/v1/load_lora_adapter", headers=ADMIN, json=body)
            assert r.status_code == 200 and ask().status_code == 200
            assert int(ask().headers["x-hylorada-adapter-version"]) > int(version)

            outside = server.adapters.parent / "outside-router"
            shutil.copytree(src, outside, dirs_exist_ok=True)
            os.symlink(outside, server.adapters / "router-link")
            try:
                for bad in ({"lora_name": "sneaked", "lora_path": str(outside)},
                            {"lora_name": "outside-router", "lora_path": str(outside)},
                            {"lora_name": "outside-router", "lora_path": "../outside-router"},
                            {"lora_name": name, "lora_path": str(folder / ".." / ".." / "outside-router")},
                            {"lora_name": "router-link", "lora_path": str(server.adapters / "router-link")},
                            {"lora_name": "sneaked", "lora_path": str(server.adapters / "demo-lora")},
                            {"lora_name": "sneaked"}, {"lora_name": "sneaked", "lora_path": 7}):
                    r = c.post("/v1/load_lora_adapter", headers=ADMIN, json=bad)
                    assert r.status_code == 400 and "lora_path must be the folder" in r.text, (bad, r.text)
                for bad in ({"lora_path": str(folder)}, {"lora_name": "../x"}, {"lora_name": ""}):
                    r = c.post("/v1/load_lora_adapter", headers=ADMIN, json=bad)
                    assert r.status_code == 400 and "lora_name must be" in r.text, (bad, r.text)
                assert c.post("/v1/unload_lora_adapter", headers=ADMIN, json={"lora_name": "nope"}).status_code == 404
                assert not {"sneaked", "outside-router", "router-link"} & models()
            finally:
                os.unlink(server.adapters / "router-link")
                shutil.rmtree(outside, ignore_errors=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
