"""Tenants on one real server (`--keys`, `--audit-log`; a server of its own on the tiny demo base).

  * each tenant sees only its adapters in /v1/models (the base only if allowed); a shared adapter is listed for
    both and answers both the same; another tenant's adapter is a 404 exactly like an unknown name on completions,
    chat and streams (same status, same body but for the name);
  * requests_per_second, tokens_per_minute (a stream cut mid-way by a final error event) and concurrent are each
    hit and answered 429 with Retry-After;
  * the keys file is reloaded while requests run: a key added works, a key removed is a 401, the unchanged key's
    requests all succeed; a malformed file at reload keeps the previous one (its reason on /health/details); at
    start-up it stops the server before the engine starts, naming the line (exit 2);
  * a tenant admin reloads its own adapter and gets the unknown-name 404 for another's; GET /v1/adapters lists
    its own only;
  * per-tenant metrics (429s and 404s by tenant) and the audit log (refusals, admin actions), never a key.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time

import httpx
import pytest

from hylorada_serve.keys import digest_hex

from .conftest import ADMIN_KEY, API_KEY, start, stop

METRICS_KEY = "key-metrics"
KEYS = {"team-a": "key-team-a", "team-b": "key-team-b", "rate": "key-rate", "tokens": "key-tokens",
        "conc": "key-conc", "late": "key-late"}


def keys_toml(without=(), late=False, broken=False) -> str:
    t = {
        "team-a": {"adapters": ["team-a-*", "shared-hy"]},
        "team-b": {"adapters": ["team-b-*", "shared-hy"], "base": False, "admin": True},
        "rate": {"adapters": ["team-a-*"], "requests_per_second": 0.2},
        "tokens": {"adapters": ["team-a-*"], "tokens_per_minute": 10},
        "conc": {"adapters": ["team-a-*"], "concurrent": 1},
    }
    if late:
        t["late"] = {"adapters": ["shared-hy"]}
    out = []
    for name, fields in t.items():
        if name in without:
            continue
        out.append(f"[tenants.{name}]")
        out.append(f'keys = ["{"zz" if broken and name == "team-b" else digest_hex(KEYS[name])}"]')
        out += [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
        out.append("")
    return "\n".join(out)


@pytest.fixture(scope="module")
def tenants(demo_files, tmp_path_factory):
    root, base, built = demo_files
    d = tmp_path_factory.mktemp("tenants")
    adapters = d / "adapters"
    adapters.mkdir()
    for src, dst in (("demo-lora", "team-a-lora"), ("demo-dora", "team-b-dora"), ("demo-hylorada", "shared-hy")):
        shutil.copytree(built / src, adapters / dst)
    keys, audit = d / "keys.toml", d / "audit.log"
    keys.write_text(keys_toml())
    srv = start(root, adapters, base, built, extra=("--keys", str(keys), "--audit-log", str(audit),
                                                      "--metrics-key", METRICS_KEY))
    try:
        yield srv, keys, audit
    finally:
        stop(srv)


def scrape(srv) -> str:
    return httpx.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"}, timeout=30).text


def client(srv, tenant: str | None) -> httpx.Client:
    key = API_KEY if tenant is None else KEYS[tenant]
    return httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def complete(http, model, stream=False, max_tokens=4, path="/v1/completions"):
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": stream, "ignore_eos": True}
    if path == "/v1/completions":
        body["prompt"] = "hello"
    else:
        body["messages"] = [{"role": "user", "content": "hello"}]
    return http.post(path, json=body)


@pytest.mark.vllm
def test_each_tenant_sees_and_uses_only_its_adapters(tenants):
    srv, _, _ = tenants
    with client(srv, None) as api:
        base = next(m["id"] for m in api.get("/v1/models").json()["data"] if m.get("parent") is None)
    with client(srv, "team-a") as a, client(srv, "team-b") as b:
        assert {m["id"] for m in a.get("/v1/models").json()["data"]} == {base, "team-a-lora", "shared-hy"}
        assert {m["id"] for m in b.get("/v1/models").json()["data"]} == {"team-b-dora", "shared-hy"}
        ra, rb = complete(a, "shared-hy", max_tokens=6), complete(b, "shared-hy", max_tokens=6)
        assert ra.status_code == rb.status_code == 200
        assert ra.json()["choices"][0]["text"] == rb.json()["choices"][0]["text"]       # one adapter, one answer
        assert complete(a, "team-a-lora").status_code == 200 and complete(a, base).status_code == 200
        assert complete(b, "team-b-dora").status_code == 200
        for http, other in ((a, "team-b-dora"), (b, "team-a-lora"), (b, base)):
            for path in ("/v1/completions", "/v1/chat/completions"):
                for stream in (False, True):
                    theirs = complete(http, other, stream=stream, path=path)
                    unknown = complete(http, "no-such-adapter", stream=stream, path=path)
                    assert theirs.status_code == unknown.status_code == 404, (other, path, stream, theirs.text)
                    assert theirs.text.replace(f"`{other}`", "`N`") == unknown.text.replace("`no-such-adapter`", "`N`")
                    assert theirs.headers["content-type"] == unknown.headers["content-type"]
        no_model = b.post("/v1/completions", json={"prompt": "hello", "max_tokens": 2})
        assert no_model.status_code == 404 and "may not use the base model" in no_model.text


@pytest.mark.vllm
def test_each_limit_is_answered_429_with_retry_after(tenants):
    srv, _, _ = tenants
    with client(srv, "rate") as r:
        codes = [complete(r, "team-a-lora", max_tokens=1) for _ in range(3)]
        assert codes[0].status_code == 200 and codes[1].status_code == 429, [c.status_code for c in codes]
        assert int(codes[1].headers["retry-after"]) in range(1, 6)
        assert codes[1].json()["error"]["type"] == "RateLimitError"
    with client(srv, "tokens") as t:
        with t.stream("POST", "/v1/completions", json={"model": "team-a-lora", "prompt": "hello", "max_tokens": 40,
                                                        "stream": True, "ignore_eos": True, "temperature": 0}) as s:
            events = [e for e in s.read().decode().split("\n\n") if e]
        assert s.status_code == 200 and events[-1] == "data: [DONE]", events[-3:]
        err = json.loads(events[-2][6:])["error"]
        assert err["code"] == 429 and "10 generated tokens per minute" in err["message"]
        texts = [json.loads(e[6:])["choices"][0]["text"] for e in events[:-2]]
        assert 0 < sum(1 for x in texts if x) <= 10                 # no token past the budget reached the client
        after = complete(t, "team-a-lora")
        assert after.status_code == 429 and int(after.headers["retry-after"]) >= 1
    with client(srv, "conc") as c1, client(srv, "conc") as c2:
        # 32 x 400 tokens through 8 sequence slots: seconds of work, so it is surely running when the second asks
        with c1.stream("POST", "/v1/completions", json={"model": "team-a-lora", "prompt": "hello", "max_tokens": 400,
                                                         "n": 32, "stream": True, "ignore_eos": True}) as s:
            chunks = s.iter_bytes()             # kept: a dropped iterator closes the connection (vLLM aborts)
            first = next(chunks)                                     # the first request is running
            assert s.status_code == 200, first
            second = complete(c2, "team-a-lora")
        assert second.status_code == 429 and second.headers["retry-after"] == "1", (first, second.text)
        deadline = time.time() + 30                                  # freed once the stream is gone (bounded)
        while complete(c2, "team-a-lora").status_code == 429 and time.time() < deadline:
            time.sleep(0.2)
        assert complete(c2, "team-a-lora").status_code == 200


@pytest.mark.vllm
def test_keys_reload_while_requests_run(tenants):
    srv, keys, _ = tenants
    codes, stop_at = [], time.time() + 60

    def traffic():
        with client(srv, "team-a") as a:
            while len(codes) < 200 and time.time() < stop_at and not done.is_set():
                codes.append(complete(a, "team-a-lora", max_tokens=2).status_code)

    def rate_series() -> bool:
        return 'tenant="rate"' in scrape(srv)

    with client(srv, "rate") as r:
        complete(r, "team-a-lora", max_tokens=1)
    assert rate_series()
    done = threading.Event()
    th = threading.Thread(target=traffic)
    th.start()
    try:
        time.sleep(1)
        keys.write_text(keys_toml(without=("rate",), late=True))
        with client(srv, "late") as late, client(srv, "rate") as gone:
            deadline = time.time() + 15
            while complete(late, "shared-hy").status_code != 200 and time.time() < deadline:
                time.sleep(0.2)
            assert complete(late, "shared-hy").status_code == 200
            assert complete(gone, "team-a-lora").status_code == 401
            assert not rate_series()                                    # a removed tenant leaves /metrics
            keys.write_text(keys_toml(broken=True, late=True))          # a bad file: the previous one stays
            with client(srv, None) as api:
                admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
                deadline, details = time.time() + 15, {}
                while time.time() < deadline and not (details.get("keys") or {}).get("error"):
                    time.sleep(0.2)
                    details = api.get("/health/details", headers=admin).json()
            assert "tenant 'team-b': keys[0]: not a SHA-256 digest" in details["keys"]["error"], details
            assert details["engine"] == "ok" and details["keys"]["tenants"] == 5
            assert complete(late, "shared-hy").status_code == 200
        with client(srv, "team-b") as b:
            assert complete(b, "team-b-dora").status_code == 200
        time.sleep(1)
    finally:
        done.set()
        th.join(60)
        keys.write_text(keys_toml())
    assert len(codes) >= 3 and set(codes) == {200}, codes


@pytest.mark.vllm
def test_tenant_admin_acts_on_its_own_adapters_only(tenants):
    srv, _, _ = tenants
    with client(srv, "team-b") as b, client(srv, "team-a") as a:
        listed = b.get("/v1/adapters").json()
        assert {x["name"] for x in listed["data"]} == {"team-b-dora", "shared-hy"} and "adapters_dir" not in listed
        r = b.post("/v1/adapters/team-b-dora/reload")
        assert r.status_code == 200 and r.json()["status"] == "ready", r.text
        theirs, unknown = b.post("/v1/adapters/team-a-lora/reload"), b.post("/v1/adapters/no-such-adapter/reload")
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.text.replace("team-a-lora", "N") == unknown.text.replace("no-such-adapter", "N")
        assert a.get("/v1/adapters").status_code == 403 and a.post("/v1/adapters/team-a-lora/reload").status_code == 403
        assert b.get("/health/details").status_code == 403


@pytest.mark.vllm
def test_tenant_metrics_and_audit_log(tenants):
    srv, _, audit = tenants
    with client(srv, "team-a") as a:
        assert complete(a, "team-b-dora").status_code == 404
    metrics = scrape(srv)
    anonymous = httpx.get(srv.url + "/metrics", timeout=30).text      # with --keys: no names without the metrics key
    assert "vllm:num_requests_running" in anonymous
    assert "hylorada_tenant_" not in anonymous and "team-a-lora" not in anonymous and "lora_requests_info" not in anonymous
    assert 'hylorada_tenant_requests_total{code="404",tenant="team-a"}' in metrics
    assert 'hylorada_tenant_limited_total{limit="concurrent",tenant="conc"}' in metrics
    assert 'hylorada_tenant_generated_tokens_total{tenant="team-a"}' in metrics
    time.sleep(0.5)
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    seen = {(x["tenant"], x["route"], x["adapter"], x["outcome"]) for x in lines}
    assert ("team-a", "/v1/completions", "team-b-dora", 404) in seen
    assert ("team-b", "/v1/adapters/team-b-dora/reload", "team-b-dora", 200) in seen
    assert ("team-b", "/v1/adapters/team-a-lora/reload", "team-a-lora", 404) in seen
    assert any(x["outcome"] == 429 and x["tenant"] == "conc" and x["reason"] == "concurrent" for x in lines)
    assert any(x["outcome"] == 401 and x["tenant"] == "-" for x in lines)
    text = audit.read_text() + metrics
    for key in (*KEYS.values(), *(digest_hex(k) for k in KEYS.values()), API_KEY, ADMIN_KEY, METRICS_KEY):
        assert key not in text


def test_a_malformed_keys_file_stops_start_up_naming_the_line(tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text(keys_toml(broken=True))
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "hylorada_serve.cli", "--base", str(tmp_path), "--adapters",
                        str(tmp_path / "a"), "--keys", str(keys)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and f"{keys}:6: tenant 'team-b': keys[0]: not a SHA-256 digest" in p.stderr, p.stderr
    assert time.time() - t0 < 60 and "Loading" not in p.stdout + p.stderr     # before any engine
    missing = subprocess.run([sys.executable, "-m", "hylorada_serve.cli", "--base", str(tmp_path), "--adapters",
                              str(tmp_path / "a"), "--keys", str(tmp_path / "nope.toml")], capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode == 2 and "--keys: no such file" in missing.stderr
