"""Hot-swap under load: while a bounded loop of concurrent requests runs across adapters, an adapter folder is
added, replaced in place and removed several times.

What is checked, per response:
  * no failures: every request is a 200, or a 404 for the swapped name at a moment it was absent;
  * the version in `x-hylorada-adapter-version` was current at some instant between send and receive (the
    server's `since` times from GET /v1/adapters give each version's interval);
  * the tokens are those of that version's weights (versions alternate between the demo-lora and demo-dora
    weights, whose greedy outputs differ), so a response is never computed on a mix or on another version;
  * every version served (the test itself sends one request per version, so no count depends on the machine);
  * the prompt spans two full 128-token CPU KV blocks, so prefix-cache hits across versions would show as
    another version's tokens;
  * afterwards every version is freed: the engine holds none of their adapter ids, their private copies are gone.
(A long stream spanning a swap: test_hotswap_stream.py.)
"""
from __future__ import annotations

import random
import shutil
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from .conftest import ADMIN_KEY, API_KEY

pytestmark = pytest.mark.vllm
NAME = "swap-me"
PROMPT = random.Random(5).choices(range(3, 500), k=260)     # two full KV blocks of 128, then a partial one
CYCLES = 3
TRAFFIC_S = 0.8                  # traffic after each change
WAIT_S = 20                      # bound on one change becoming visible


def complete(http: httpx.Client, model: str) -> httpx.Response:
    return http.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 4, "temperature": 0,
                                              "ignore_eos": True, "return_token_ids": True})


def admin_state(http: httpx.Client) -> dict | None:
    r = http.get("/v1/adapters", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    return next((a for a in r.json()["data"] if a["name"] == NAME), None)


def wait_for(http, want_version: int | None) -> dict:
    deadline = time.time() + WAIT_S
    while time.time() < deadline:
        st = admin_state(http)
        if st is not None and st["version"] == want_version and st["status"] in ("ready", "removed"):
            return st
        time.sleep(0.05)
    pytest.fail(f"{NAME} did not reach version {want_version} within {WAIT_S} s: {admin_state(http)}")


def put(server, src: str, in_place: bool) -> None:
    """Write DIR/NAME with the files of spare/src: a new folder by one rename, or in place + .ready last."""
    target, source = server.adapters / NAME, server.spare / src
    if not in_place:
        tmp = server.adapters / f".{NAME}.tmp-{uuid.uuid4().hex[:6]}"
        shutil.copytree(source, tmp)
        tmp.rename(target)
        return
    keep = {f.name for f in source.iterdir()}
    for f in target.iterdir():
        if f.name not in keep:
            f.unlink()
    for f in source.iterdir():
        shutil.copyfile(f, target / f.name)
    (target / ".ready").write_text("")


def remove(server) -> None:
    trash = server.adapters / f".trash-{uuid.uuid4().hex[:6]}"
    (server.adapters / NAME).rename(trash)
    shutil.rmtree(trash)


def test_add_replace_remove_under_concurrent_load(server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
        expected = {src: complete(http, src).json()["choices"][0]["token_ids"] for src in ("demo-lora", "demo-dora")}
        assert expected["demo-lora"] != expected["demo-dora"]
        base_ids = complete(http, "tiny-llama").json()["choices"][0]["token_ids"]
        timeline: list[tuple[float, int | None]] = []      # (since, version or None = absent)
        content: dict[int, str] = {}                        # version -> weights it carries
        published: list[dict] = []                          # admin state of each version when it was current
        results, errors, stop = [], [], threading.Event()

        def worker(i: int) -> None:
            models = [NAME, NAME, "demo-lora", "tiny-llama"]
            with httpx.Client(base_url=server.url, headers=headers, timeout=60) as c:
                k = i
                while not stop.is_set() and len(results) < 5000:
                    model, k = models[k % len(models)], k + 1
                    t0 = time.time()
                    try:
                        r = complete(c, model)
                        results.append((model, t0, time.time(), r.status_code, r.headers.get("x-hylorada-adapter-version"),
                                        r.json()["choices"][0]["token_ids"] if r.status_code == 200 else r.text))
                    except Exception as e:                  # noqa: BLE001 - every failure is reported
                        errors.append(f"{model}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        try:
            version = 0
            for _ in range(CYCLES):
                for src, action in (("demo-lora", "add"), ("demo-dora", "replace"), ("demo-lora", "replace"),
                                    (None, "remove")):
                    if action == "remove":
                        remove(server)
                        st = wait_for(http, None)
                        timeline.append((st["since"], None))
                    else:
                        put(server, src, in_place=action == "replace")
                        version += 1
                        st = wait_for(http, version)
                        timeline.append((st["since"], version))
                        content[version] = src
                        published.append(st)
                    t0 = time.time()                        # one request of our own in every state
                    r = complete(http, NAME)
                    results.append((NAME, t0, time.time(), r.status_code, r.headers.get("x-hylorada-adapter-version"),
                                    r.json()["choices"][0]["token_ids"] if r.status_code == 200 else r.text))
                    time.sleep(TRAFFIC_S)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=90)
        assert not errors, errors[:5]
        assert {r[0] for r in results} == {NAME, "demo-lora", "tiny-llama"}

        def intervals(v):                                   # [(start, end)] during which state v was current
            out = []
            for j, (since, state) in enumerate(timeline):
                if state == v:
                    out.append((since, timeline[j + 1][0] if j + 1 < len(timeline) else float("inf")))
            return out

        tol, swapped = 0.05, 0
        for model, t0, t1, code, ver, body in results:
            if model != NAME:
                assert code == 200, (model, code, body)
                assert body == (expected["demo-lora"] if model == "demo-lora" else base_ids)
                continue
            if code == 404:
                absent = intervals(None) + [(float("-inf"), timeline[0][0])]
                assert any(s - tol <= t1 and e + tol >= t0 for s, e in absent), (t0, t1, timeline)
                continue
            assert code == 200 and ver is not None, (code, body)
            v = int(ver)
            assert any(s - tol <= t1 and e + tol >= t0 for s, e in intervals(v)), (v, t0, t1, timeline)
            assert body == expected[content[v]], (v, content[v], body)
            swapped += 1
        assert swapped >= CYCLES * 3
        served_versions = {int(r[4]) for r in results if r[0] == NAME and r[3] == 200}
        assert served_versions == set(content)                # every version took traffic
        uids, paths = {st["uid"] for st in published}, [Path(st["path"]) for st in published]
        assert len(uids) == len(published) == CYCLES * 3
        deadline = time.time() + WAIT_S                       # retired versions are freed once idle
        while time.time() < deadline:
            r = http.get("/v1/adapters", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
            if r["retired_not_yet_freed"] == 0 and not uids & set(r["engine_lora_ids"]) and \
                    not any(p.exists() for p in paths):
                break
            time.sleep(0.2)
        assert r["retired_not_yet_freed"] == 0
        assert not uids & set(r["engine_lora_ids"]), "the engine still holds a freed version"
        assert [p for p in paths if p.exists()] == [], "a freed version's private copy is still there"
