"""The real hylorada-serve over HTTP with the `openai` client: listing, outputs equal to the served-form reference,
streaming, error codes, auth, metrics. Hot-swap under load is in test_hotswap.py, SIGTERM in test_server_shutdown.py."""
from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from .conftest import ADMIN_KEY, API_KEY

pytestmark = pytest.mark.vllm
DEMO = ("demo-lora", "demo-dora", "demo-hylorada")
PROMPTS = [[5, 77, 140, 33, 9], [300, 12, 45]]
N_NEW = 8


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(server):
    """Greedy tokens from hylorada.reference.served.ServedReference (HF, float32) for each model and prompt; and for the
    DoRA/HyLoRADA adapters also their plain-LoRA part (what stock vLLM serves without the engine patches)."""
    from hylorada.reference.served import ServedReference
    from hylorada.format.load import load_served

    ref = ServedReference(server.base)
    out = {}
    for name in (None, *DEMO):
        ad = load_served(server.adapters / name) if name else None
        out[name or "base"] = [ids for ids, _ in ref.greedy(PROMPTS, [ad] * len(PROMPTS), N_NEW)]
        if ad is not None and ad.kind != "lora":
            plain = dataclasses.replace(ad, dynamic={}, meta=ad.meta.replace(position_bias=None, daa=None,
                                                                                 landmarks=None, has_scale=False))
            out[name + ":lora-part"] = [ids for ids, _ in ref.greedy(PROMPTS, [plain] * len(PROMPTS), N_NEW)]
    return out


def test_models_lists_base_and_every_adapter(client, server):
    ids = {m.id for m in client.models.list().data}
    assert ids == {"tiny-llama", *DEMO}


def completion_ids(client, model: str, prompt: list[int]) -> tuple[list[int], httpx.Headers]:
    raw = client.completions.with_raw_response.create(
        model=model, prompt=prompt, max_tokens=N_NEW, temperature=0,
        extra_body={"ignore_eos": True, "return_token_ids": True})
    return list(raw.parse().choices[0].token_ids), raw.headers


@pytest.mark.parametrize("model", ["base", *DEMO])
def test_completion_equals_reference(client, reference, model):
    name = "tiny-llama" if model == "base" else model
    got = [completion_ids(client, name, p) for p in PROMPTS]
    ids = [g[0] for g in got]
    if model != "base":
        assert all(h["x-hylorada-adapter"] == model and h["x-hylorada-adapter-version"] == "1" for _, h in got)
    if model + ":lora-part" in reference:          # else the test could not tell the engine patches are active
        assert reference[model] != reference[model + ":lora-part"], f"{model}: its reference is its plain-LoRA part"
        assert ids != reference[model + ":lora-part"], f"{model}: served as its plain-LoRA part (engine patches off)"
    assert ids == reference[model]


@pytest.mark.parametrize("model", ["tiny-llama", "demo-lora", "demo-hylorada"])
def test_chat_and_streaming_match_non_streaming(client, model):
    msgs = [{"role": "user", "content": "the cat sees a dog"}]
    kw = dict(model=model, max_tokens=N_NEW, temperature=0, extra_body={"ignore_eos": True})
    full = client.chat.completions.create(messages=msgs, **kw)
    assert full.model == model and full.usage.completion_tokens == N_NEW
    chunks = list(client.chat.completions.create(messages=msgs, stream=True, **kw))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    text = client.completions.create(prompt="the cat", **kw).choices[0].text
    streamed = client.completions.create(prompt="the cat", stream=True, **kw)
    assert "".join(c.choices[0].text for c in streamed) == text


def test_chat_equals_completion_on_the_rendered_template(client, server):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(server.base)
    msgs = [{"role": "user", "content": "hello world"}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    kw = dict(model="demo-lora", max_tokens=N_NEW, temperature=0, extra_body={"ignore_eos": True})
    chat = client.chat.completions.create(messages=msgs, **kw).choices[0].message.content
    assert chat == client.completions.create(prompt=prompt, **kw).choices[0].text


def test_unknown_model_is_openai_404(client):
    for model in ("nope", "../demo-lora", "/etc/passwd", "demo-lora/../../x", "DEMO-LORA"):
        with pytest.raises(openai.NotFoundError) as e:
            client.completions.create(model=model, prompt="x", max_tokens=2)
        assert e.value.body["param"] == "model" if isinstance(e.value.body, dict) else True


@pytest.mark.parametrize("bad", [{"max_tokens": -1}, {"temperature": -3}, {"max_tokens": 10_000},
                                 {"n": "two"}, {"top_p": 7}, {"prompt": [5] * 600},
                                 {"n": 1000, "temperature": 1.0}])
def test_invalid_requests_are_400(client, bad):
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="demo-lora", **{"prompt": "the cat", "max_tokens": 2, **bad})


def test_malformed_json_is_400(server):
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", timeout=10,
                   headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()


def test_auth(server):
    url, body = server.url, {"model": "demo-lora", "prompt": "x", "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {ADMIN_KEY}x"}):
        r = httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == 401
    assert httpx.get(url + "/v1/models", timeout=10).status_code == 401
    assert httpx.get(url + "/v1/adapters", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).status_code == 401
    r = httpx.get(url + "/v1/adapters", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    assert r.status_code == 200 and {a["name"] for a in r.json()["data"]} >= set(DEMO)
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    assert API_KEY not in server.log.read_text(errors="replace")
    assert ADMIN_KEY not in server.log.read_text(errors="replace")


def test_admin_names_cannot_escape_the_folder(server):
    h = {"Authorization": f"Bearer {ADMIN_KEY}"}
    # ".." is normalised away by the client (the request is then not an admin route: 401 without the API key)
    for name, codes in (("..", (400, 401, 404)), ("..%2F..%2Fetc", (400, 404)), ("nope", (404,)), (".hidden", (400,)),
                        ("demo-lora%00", (400, 404))):
        r = httpx.post(f"{server.url}/v1/adapters/{name}/load", headers=h, timeout=10)
        assert r.status_code in codes, (name, r.status_code, r.text)


def test_client_disconnect_mid_stream_leaves_server_healthy(client, server):
    body = {"model": "demo-lora", "prompt": "the cat", "max_tokens": 300, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        assert r.status_code == 200
        next(r.iter_lines())                                           # one chunk, then hang up
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    assert completion_ids(client, "demo-lora", PROMPTS[0])[1]["x-hylorada-adapter"] == "demo-lora"


def test_health_and_metrics(client, server):
    client.completions.create(model="demo-lora", prompt="the", max_tokens=2)
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    text = httpx.get(server.url + "/metrics", timeout=10).text
    assert "vllm:" in text                                               # vLLM's own
    assert 'hylorada_adapter_requests_total{adapter="demo-lora",code="200"}' in text
    assert 'hylorada_adapter_generated_tokens_total{adapter="demo-lora"}' in text
    assert 'hylorada_adapter_request_seconds_count{adapter="demo-lora"}' in text
    assert 'hylorada_adapter_load_events_total{adapter="demo-lora",event="loaded"}' in text


def test_adapters_show_where_they_live(client, server):
    """GET /v1/adapters says where each serving adapter is (patches/residency.py through collective_rpc): the one
    just used is in a slot or the CPU cache with its tensors' bytes (the same as its validated files'), read from
    disk once; /metrics gets the residency series within a refresh."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    client.completions.create(model="demo-lora", prompt="the", max_tokens=2)
    body = httpx.get(server.url + "/v1/adapters", headers=admin, timeout=30).json()
    rows = {r["name"]: r for r in body["data"]}
    lora = rows["demo-lora"]
    cap = dict(body["engine_capacity"])
    slot_bytes, batch_bytes = cap.pop("slot_bytes"), cap.pop("batch_bytes")
    assert cap == {"slots": 4, "host": 8, "rope_tables": 1, "rope_bytes": 0, "norm_bytes": 0, "embed_bytes": 0}, \
        body["engine_capacity"]                    # no RoPE scaling, no trained norms or embeddings here
    assert isinstance(slot_bytes, int) and slot_bytes > 0      # 1-slot placeholders (tests/patches/test_engine.py)
    assert isinstance(batch_bytes, int) and batch_bytes > 0    # the decode steps just run built the batch stacks
    assert lora["where"] in ("slot", "host") and lora["host_bytes"] == lora["size_bytes"], lora
    assert lora["engine_loads"] >= 1
    assert lora["stamped_loads"] == lora["engine_loads"], lora     # the publish check's stamp held in the worker
    assert all(r["where"] in ("slot", "host", "disk") for r in rows.values() if r["status"] == "ready")
    assert all(r["where"] is None for r in rows.values() if r["uid"] is None)
    deadline, text = time.time() + 15, ""
    while time.time() < deadline and 'hylorada_adapters_resident{where="slot"}' not in text:
        time.sleep(0.5)
        text = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'hylorada_adapters_resident{where="slot"}' in text and "hylorada_adapters_cache_bytes " in text
    assert 'hylorada_adapter_engine_loads_total{adapter="demo-lora"}' in text


def test_lora_requests_info_keeps_one_series(client, server):
    """vLLM's own gauge made a series per (running, waiting) adapter set ever seen (patches/lora_info.py)."""
    for name in ("demo-lora", "demo-dora", "demo-hylorada", "demo-lora"):
        client.completions.create(model=name, prompt="the", max_tokens=3)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda m: client.completions.create(model=m, prompt="a cat", max_tokens=4),
                      ["demo-lora", "demo-dora", "demo-hylorada"] * 2))
    text = httpx.get(server.url + "/metrics", timeout=10).text
    lines = [x for x in text.splitlines() if x.startswith("vllm:lora_requests_info{")]
    assert len(lines) == 1, lines


def test_one_full_gc_after_vllm_froze_the_heap(client, server):
    """hylorada_serve/gc_heap.py: without it CPython's full collections wait on the frozen start-up heap."""
    deadline = time.monotonic() + 30
    while "gc: one full collection after the start-up heap was frozen" not in server.log.read_text(errors="replace"):
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.5)


def test_bad_adapters_are_refused_at_start_with_a_reason(client, server):
    from .conftest import BROKEN

    st = {a["name"]: a for a in httpx.get(server.url + "/v1/adapters", timeout=10,
                                          headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()["data"]}
    for name in BROKEN:
        assert st[name]["status"] == "refused" and st[name]["reason"], st[name]
    assert "never loaded" in st["broken-pickle"]["reason"]
    assert not set(BROKEN) & {m.id for m in client.models.list().data}
    log = server.log.read_text(errors="replace")
    assert all(f"refused  {name}" in log for name in BROKEN)           # the start-up report


def test_admin_reload_unload_load(client, server):
    """Last in this file: it changes demo-hylorada's version."""
    h = {"Authorization": f"Bearer {ADMIN_KEY}"}
    url = f"{server.url}/v1/adapters/demo-hylorada"
    before = completion_ids(client, "demo-hylorada", PROMPTS[0])[0]
    r = httpx.post(url + "/reload", headers=h, timeout=60)
    assert r.status_code == 200 and r.json()["version"] == 2
    ids, headers = completion_ids(client, "demo-hylorada", PROMPTS[0])
    assert headers["x-hylorada-adapter-version"] == "2" and ids == before
    assert httpx.post(url + "/unload", headers=h, timeout=60).json()["status"] == "unloaded"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="demo-hylorada", prompt="x", max_tokens=2)
    time.sleep(0.5)                                                    # the watcher does not bring it back
    assert "demo-hylorada" not in {m.id for m in client.models.list().data}
    r = httpx.post(url + "/load", headers=h, timeout=60)
    assert r.status_code == 200 and r.json()["version"] == 3
    assert completion_ids(client, "demo-hylorada", PROMPTS[0])[0] == before
    r = httpx.post(f"{server.url}/v1/adapters/broken-bytes/reload", headers=h, timeout=60)
    assert r.status_code == 422 and "broken-bytes" in r.json()["error"]["message"]
