"""Hostile requests against the shared session server: each gets the right 4xx in OpenAI's error shape (or, for a
client that hangs up, a clean cancel), and after every test the server is healthy and still answers correctly.
(test_server.py has the first few: unknown model, a handful of 400s, malformed JSON, one disconnect.)"""
from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest

from .conftest import API_KEY

pytestmark = pytest.mark.vllm
DEMO = ("demo-lora", "demo-dora", "demo-hylorada")
OK = {"model": "demo-lora", "prompt": "the cat", "max_tokens": 2}
CHAT = {"model": "demo-lora", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


@pytest.fixture(autouse=True)
def still_healthy(http):
    yield
    assert http.get("/health").status_code == 200
    r = http.post("/v1/completions", json={**OK, "temperature": 0})
    assert r.status_code == 200 and r.headers["x-hylorada-adapter"] == "demo-lora"


def post(http, path: str, body) -> httpx.Response:
    if isinstance(body, (bytes, str)):
        return http.post(path, content=body, headers={"Content-Type": "application/json"})
    return http.post(path, json=body)


def assert_error(r: httpx.Response, codes=(400,)) -> dict:
    assert r.status_code in codes, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err["message"] and err["code"] == r.status_code
    return err


def metric_sum(http, name: str) -> float:
    m = re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", http.get("/metrics").text, re.M)
    assert m, f"{name} not in /metrics"
    return sum(float(x) for x in m)


TRICKS = ["../demo-lora", "demo-lora/..", "./demo-lora", "/abs/demo-lora", "adapters/demo-lora", "demo-lora/",
          "demo-lora?x=1", "demo-lora#frag", "http://127.0.0.1/demo-lora", "file:///etc/passwd", "demo-lora%2F..",
          "..%2Fdemo-lora", "..\\demo-lora", " demo-lora", "demo-lora\n", "demo-lora\x00", "demo-lora@v1",
          "demo-lora@v2", "a" * 5000]


@pytest.mark.parametrize("path,base", [("/v1/completions", OK), ("/v1/chat/completions", CHAT)])
def test_model_tricks_are_404(http, path, base):
    for model in TRICKS:
        err = assert_error(post(http, path, {**base, "model": model}), (404,))
        assert err["param"] == "model" or "model" in err["message"].lower(), (model, err)


@pytest.mark.parametrize("model", ["", None])
def test_empty_or_null_model_means_the_base(http, model):
    """vLLM's rule (kept): no model named = the base model; never an adapter."""
    r = post(http, "/v1/completions", {**OK, "model": model})
    assert r.status_code == 200 and r.json()["model"] == "tiny-llama" and "x-hylorada-adapter" not in r.headers


WRONG_TYPES = [{"model": 5}, {"model": ["demo-lora"]}, {"prompt": {"a": 1}}, {"prompt": None},
               {"prompt": [1.5, 2]}, {"prompt": [[1, "x"]]}, {"max_tokens": "ten"}, {"max_tokens": 2.5},
               {"temperature": "hot"}, {"stream": "maybe"}, {"n": [1]}, {"stop": 5}, {"logit_bias": "x"},
               {"seed": "s"}]


@pytest.mark.parametrize("bad", WRONG_TYPES, ids=lambda b: json.dumps(b)[:30])
def test_wrong_types_are_400(http, bad):
    assert_error(post(http, "/v1/completions", {**OK, **bad}))


@pytest.mark.parametrize("bad", [{"messages": "hi"}, {"messages": [{"content": 1}]}, {"messages": []},
                                 {"messages": [{"role": "user", "content": {"x": 1}}]}, {"messages": None}],
                         ids=lambda b: json.dumps(b)[:30])
def test_wrong_chat_shapes_are_400(http, bad):
    assert_error(post(http, "/v1/chat/completions", {**CHAT, **bad}))


MALFORMED = [b"{not json", b"", b"[]", b"null", b'"a string"', b'{"model": "demo-lora", "prompt": "x",',
             b"\xff\xfe\x00garbage", b'{"model": "demo-lora", "prompt": "x", "max_tokens": NaN}',
             b'{"model": "demo-lora", "prompt": "x", "temperature": Infinity}',
             b'{"model": "demo-lora", "prompt": "x", "top_p": NaN}',
             b'{"model": "demo-lora", "prompt": "x", "max_tokens": 1e999}']


@pytest.mark.parametrize("body", MALFORMED, ids=lambda b: b[:24].decode(errors="replace"))
def test_malformed_and_nonfinite_json_is_400(http, body):
    assert_error(post(http, "/v1/completions", body))


ABSURD = [{"temperature": -0.5}, {"temperature": 1e30}, {"top_p": 0}, {"top_p": -1}, {"top_k": -7}, {"min_p": 3},
          {"presence_penalty": 50}, {"frequency_penalty": -1e9}, {"repetition_penalty": 0},
          {"repetition_penalty": -2}, {"logprobs": -5}, {"logprobs": 10_000}, {"max_tokens": 0},
          {"max_tokens": 2 ** 63}, {"min_tokens": 50, "max_tokens": 2}, {"n": 0}, {"n": -3}, {"n": 10 ** 9},
          {"n": 65, "temperature": 1.0},
          {"prompt": [999_999]}, {"prompt": [-1]}, {"prompt": [2 ** 40]}, {"logit_bias": {"999999": 5}},
          {"allowed_token_ids": [999_999]}, {"stop_token_ids": [-1]}, {"seed": 2 ** 70},
          {"prompt_logprobs": 10_000}]


@pytest.mark.parametrize("bad", ABSURD, ids=lambda b: json.dumps(b)[:40])
def test_absurd_values_are_400(http, bad):
    assert_error(post(http, "/v1/completions", {**OK, **bad}))


@pytest.mark.parametrize("best_of", [1000, 10 ** 9])
def test_huge_best_of_does_no_extra_work(http, best_of):
    """vLLM 0.32's completions API has no best_of (the field is ignored): one choice, max_tokens tokens, and the
    engine generated just those (no hidden candidates)."""
    before = metric_sum(http, "vllm:generation_tokens_total")
    r = post(http, "/v1/completions", {**OK, "best_of": best_of, "ignore_eos": True})
    assert r.status_code == 200 and len(r.json()["choices"]) == 1, r.text[:300]
    assert r.json()["usage"]["completion_tokens"] == 2
    assert metric_sum(http, "vllm:generation_tokens_total") - before == 2


@pytest.mark.parametrize("bad", [{"max_tokens": 10_000}, {"messages": [{"role": "user", "content": "x" * 4000}]},
                                 {"n": 10 ** 6}, {"temperature": -1}],
                         ids=["max_tokens", "long-prompt", "huge-n", "negative-temperature"])
def test_chat_limits_are_400(http, bad):
    assert_error(post(http, "/v1/chat/completions", {**CHAT, **bad}))


def test_prompt_longer_than_context_is_400(http):
    err = assert_error(post(http, "/v1/completions", {**OK, "prompt": "the cat sat " * 400}))
    assert "context" in err["message"].lower() or "length" in err["message"].lower() or "token" in err["message"].lower()


def test_clients_that_hang_up_mid_stream_are_cancelled(http, server):
    """Six long streams, each closed after its first chunk: the engine stops working on them. Running requests go
    back to 0 (bounded), and the engine generated far fewer than the 6 x 400 tokens the streams asked for — the
    six would reach 0 running on their own too, once complete, so only the token count tells an abort."""
    n, max_tokens = 6, 400
    body = {"model": "demo-hylorada", "prompt": "the cat", "max_tokens": max_tokens, "ignore_eos": True,
            "stream": True}
    tokens_before = metric_sum(http, "vllm:generation_tokens_total")
    for _ in range(n):
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as r:
            assert r.status_code == 200
            next(r.iter_lines())
    deadline = time.time() + 60
    while metric_sum(http, "vllm:num_requests_running") > 0 and time.time() < deadline:
        time.sleep(0.2)
    assert metric_sum(http, "vllm:num_requests_running") == 0
    generated = metric_sum(http, "vllm:generation_tokens_total") - tokens_before
    assert generated < n * max_tokens / 2, f"{generated} tokens generated: the streams ran on after the hang-ups"


def test_many_concurrent_streams_all_complete(server):
    """32 concurrent streams (the engine runs 8 at a time) across the base and every adapter: every one is a 200
    that ends with [DONE] and carries exactly max_tokens tokens in its usage."""
    models, results = ["tiny-llama", *DEMO], []

    def one(i: int):
        body = {"model": models[i % len(models)], "prompt": [5 + i, 77, 140], "max_tokens": 12, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.7, "seed": i}
        try:
            with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=180,
                              headers={"Authorization": f"Bearer {API_KEY}"}) as r:
                lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
            usage = [json.loads(ln[6:])["usage"] for ln in lines[:-1] if json.loads(ln[6:]).get("usage")]
            results.append((r.status_code, lines[-1] if lines else None, usage[-1]["completion_tokens"] if usage else None))
        except httpx.HTTPError as e:
            results.append((type(e).__name__, None, None))

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert len(results) == 32 and all(r == (200, "data: [DONE]", 12) for r in results), results


def test_huge_body_is_413_before_it_is_read(http):
    """--max-body-mb (16 MiB by default): declared or chunked, the body is refused before vLLM parses it."""
    prompt = "x" * (17 << 20)
    err = assert_error(post(http, "/v1/completions", json.dumps({**OK, "prompt": prompt})), (413,))
    assert "--max-body-mb" in err["message"]

    def chunked():
        piece = b"[" + b"1," * (1 << 19)
        for _ in range(40):                      # ~40 MiB with no Content-Length
            yield piece
    r = http.post("/v1/completions", content=chunked(), headers={"Content-Type": "application/json"})
    assert_error(r, (413,))
