"""A request pinned to its version across a hot-swap, end to end (shared session server).

A long greedy stream (a prompt of more than two 128-token CPU KV blocks) runs on v1 of an adapter while its folder
is replaced in place with other weights. Checked:
  * the stream keeps v1 to its last token, and its tokens equal ServedReference's for v1's weights;
  * a request sent mid-stream with the same prompt gets v2 and v2's reference tokens, though v1's blocks for that
    prompt are cached and in use (prefix-cache keys include the version's adapter id);
  * once the stream is done, v1 is freed: the engine no longer holds its adapter id and its private copy is gone.
"""
from __future__ import annotations

import json
import random
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from .conftest import ADMIN_KEY, API_KEY

pytestmark = pytest.mark.vllm
NAME = "swap-long"
PROMPT = random.Random(11).choices(range(3, 500), k=300)      # 300 tokens: 3 KV blocks of 128
N_STREAM, N_SHORT = 200, 16                                   # 300 + 200 <= the server's --max-model-len 512
WAIT_S = 30
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def listing(http: httpx.Client) -> dict:
    return http.get("/v1/adapters", headers=ADMIN).json()


def state(http: httpx.Client) -> dict | None:
    return next((a for a in listing(http)["data"] if a["name"] == NAME), None)


def add(server, src: str) -> None:
    """DIR/NAME appears at once (one rename), complete (.ready inside)."""
    tmp = server.adapters / f".{NAME}.tmp"
    shutil.copytree(server.spare / src, tmp)
    (tmp / ".ready").write_text("")
    tmp.rename(server.adapters / NAME)


def replace_in_place(server, src: str) -> None:
    """The files of DIR/NAME rewritten with those of spare/src, .ready last."""
    keep = {f.name for f in (server.spare / src).iterdir()}
    for f in (server.adapters / NAME).iterdir():
        if f.name not in keep:
            f.unlink()
    for f in (server.spare / src).iterdir():
        shutil.copyfile(f, server.adapters / NAME / f.name)
    (server.adapters / NAME / ".ready").write_text("")


def gauge(http: httpx.Client, series: str) -> float:
    """A gauge from /metrics (hylorada_serve/metrics.py): `name` or `name{labels}` exactly."""
    m = re.search(rf"^{re.escape(series)} ([0-9.e+-]+)$", http.get("/metrics").text, re.M)
    assert m, f"{series} not in /metrics"
    return float(m.group(1))


def wait_version(http: httpx.Client, version: int) -> dict:
    deadline = time.time() + WAIT_S
    while time.time() < deadline:
        st = state(http)
        if st and st["status"] == "ready" and st["version"] == version:
            return st
        time.sleep(0.05)
    pytest.fail(f"{NAME} did not reach v{version} in {WAIT_S} s: {state(http)}")


@pytest.fixture(scope="module")
def reference(server):
    from hylorada.format.load import load_served
    from hylorada.reference.served import ServedReference

    ref = ServedReference(server.base)                       # full recompute per token: only what is compared
    return {src: ref.greedy([PROMPT], [load_served(server.spare / src)], n)[0][0]
            for src, n in (("demo-lora", N_STREAM), ("demo-dora", N_SHORT))}


def test_stream_keeps_its_version_across_a_swap_and_the_old_version_is_freed(server, reference):
    assert reference["demo-lora"][:N_SHORT] != reference["demo-dora"]
    body = {"model": NAME, "prompt": PROMPT, "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    version_of = f'hylorada_adapter_version{{adapter="{NAME}"}}'
    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as http:
        serving = gauge(http, "hylorada_adapters_serving")
        add(server, "demo-lora")
        v1 = wait_version(http, 1)
        assert v1["uid"] in listing(http)["engine_lora_ids"] and Path(v1["path"]).is_dir()
        assert gauge(http, version_of) == 1 and gauge(http, "hylorada_adapters_serving") == serving + 1
        try:
            streamed, mid = [], None
            with http.stream("POST", "/v1/completions", json={**body, "max_tokens": N_STREAM, "stream": True}) as r:
                assert r.status_code == 200 and r.headers["x-hylorada-adapter-version"] == "1"
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    streamed += json.loads(line[6:])["choices"][0].get("token_ids") or []
                    if mid is None:                           # first chunk: replace the folder, then ask v2
                        replace_in_place(server, "demo-dora")
                        v2 = wait_version(http, 2)
                        mid = http.post("/v1/completions", json={**body, "max_tokens": N_SHORT})
                        mid_at_tokens = len(streamed)
                last_chunk_at = time.time()
            assert mid_at_tokens < N_STREAM and v2["since"] < last_chunk_at, "the stream ended before the swap"
            assert streamed == reference["demo-lora"], "the stream did not stay on v1's weights"
            assert mid.status_code == 200 and mid.headers["x-hylorada-adapter-version"] == "2"
            assert mid.json()["choices"][0]["token_ids"] == reference["demo-dora"]
            r = http.post("/v1/completions", json={**body, "max_tokens": N_SHORT})
            assert r.headers["x-hylorada-adapter-version"] == "2"
            assert r.json()["choices"][0]["token_ids"] == reference["demo-dora"]

            deadline = time.time() + WAIT_S                   # v1 freed: engine slot and private copy
            while time.time() < deadline:
                held = listing(http)
                if v1["uid"] not in held["engine_lora_ids"] and not Path(v1["path"]).exists():
                    break
                time.sleep(0.2)
            assert v1["uid"] not in held["engine_lora_ids"], held
            assert not Path(v1["path"]).exists()
            assert held["retired_not_yet_freed"] == 0
            assert v2["uid"] in held["engine_lora_ids"] and Path(v2["path"]).is_dir()
            assert gauge(http, version_of) == 2 and gauge(http, "hylorada_adapters_serving") == serving + 1
        finally:
            trash = server.adapters / f".trash-{NAME}"
            (server.adapters / NAME).rename(trash)
            shutil.rmtree(trash)
        deadline = time.time() + WAIT_S                       # removed: not serving, the gauges say so
        while state(http)["status"] != "removed" and time.time() < deadline:
            time.sleep(0.1)
        assert gauge(http, version_of) == 0 and gauge(http, "hylorada_adapters_serving") == serving
