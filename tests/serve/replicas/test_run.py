"""`hylorada-serve --replicas 2` on a local Ray cluster (issue 19's must-show), the tiny base, bounded in time.

One cluster for the module: 2 replicas, 24 adapter names over 8 seeded LoRA weight sets, --models-per-replica 12.
  * ready: both replicas list the same /v1/models (the base and every name);
  * Zipf(1) traffic through the one endpoint (600 requests): every answer equals ServedReference for its name's
    weight set, both replicas serve, and >= 90 % of adapter requests land on a replica that already held the
    adapter (x-hylorada-affinity: hit; the first request for a name is always a load);
  * /metrics: one Prometheus text with each replica's series labelled;
  * a hot-swap (one folder rewritten with another weight set, then .ready) is seen by both replicas, and after it
    completed on a replica no request gets the older version there;
  * a replica's server killed (SIGKILL, its whole process group) mid-load: no client request fails (the ingress
    retries a request whose replica could not answer), and Ray replaces the replica.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ..conftest import ADMIN_KEY, API_KEY
from bench.proc import free_port, launch, stop, wait_ready

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
N_NAMES, N_SETS, RANK, PER_REPLICA = 24, 8, 4, 12
N_ZIPF = 600                 # requests; the first request for each name is a load wherever it goes (24 of 600)
PROMPT, N_NEW = [5, 77, 140, 33, 9, 300], 4
API = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
READY_S, RESTART_S = 600, 420
KV_BYTES = 256 << 20


@pytest.fixture(scope="module")
def cluster(demo_files):
    from bench.compare.adapters import build_peft, build_served_lora
    from hylorada.format.load import load_served
    from hylorada.reference.served import ServedReference

    root, base, built = demo_files
    cache = Path(tempfile.mkdtemp(prefix="replica-sets-", dir=root))
    sets = build_served_lora(base, build_peft(base, N_SETS, cache=cache, rank=RANK), cache=cache)
    want = [t for t, _ in ServedReference(base).greedy([PROMPT] * N_SETS, [load_served(s) for s in sets], N_NEW)]
    assert len({tuple(w) for w in want}) > N_SETS // 2, "the weight sets are not told apart by their tokens"
    adapters = Path(tempfile.mkdtemp(prefix="adapters-replicas-", dir=root))
    names = [f"r-{i:02d}" for i in range(N_NAMES)]
    for i, name in enumerate(names):
        shutil.copytree(sets[i % N_SETS], adapters / name, ignore=shutil.ignore_patterns("bench_stamp.json"))
    port = free_port()
    log = root / f"replicas-{port}.log"
    cmd = [sys.executable, "-m", "hylorada_serve.cli", "--replicas", "2", "--models-per-replica", str(PER_REPLICA),
           "--base", str(base), "--adapters", str(adapters), "--port", str(port), "--stable-seconds", "1",
           "--poll-interval", "0.2", "--max-loras", "4", "--dtype", "float32", "--max-model-len", "512",
           "--max-num-seqs", "8", "--kv-cache-memory-bytes", str(KV_BYTES)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYLORADA_")}
    env.update(VLLM_HOST_IP="127.0.0.1", PYTHONUNBUFFERED="1", HYLORADA_API_KEY=API_KEY, HYLORADA_ADMIN_KEY=ADMIN_KEY,
               HYLORADA_REPLICA_LOG_DIR=str(root / f"replica-logs-{port}"), RAY_USAGE_STATS_ENABLED="0")
    proc = launch(cmd, log, env=env, cwd=Path(__file__).resolve().parents[3])
    url = f"http://127.0.0.1:{port}"
    pids: set[int] = set()

    def ready() -> bool:
        rows = replicas(url)
        pids.update(r["pid"] for r in rows if "pid" in r)
        return len(rows) == 2 and all(len(r["models"].get("data", [])) == N_NAMES + 1 for r in rows)
    try:
        why = wait_ready(proc, ready, READY_S, poll_s=2.0)
        if why is not None:
            pytest.fail(f"hylorada-serve --replicas 2 {why} during start-up:\n{tail(log)}\n{tail_replicas(root)}")
        yield url, adapters, names, sets, want, pids, root
    finally:
        stop(proc, signal.SIGTERM, timeout_s=120)
        for pid in pids:                              # a replica's server outliving the cluster (it should not)
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def tail_replicas(root: Path) -> str:
    return "\n".join(f"--- {p}\n{tail(p, 25)}" for p in sorted(root.glob("replica-logs-*/*.log")))


def replicas(url: str) -> list[dict]:
    try:
        r = httpx.get(url + "/v1/replicas", headers=ADMIN, timeout=30)
        return r.json()["replicas"] if r.status_code == 200 else []
    except (httpx.HTTPError, ValueError, KeyError):
        return []


def ask(http: httpx.Client, name: str) -> dict:
    r = http.post("/v1/completions", json={"model": name, "prompt": PROMPT, "max_tokens": N_NEW, "temperature": 0,
                                           "ignore_eos": True, "return_token_ids": True})
    ok = r.status_code == 200
    return {"name": name, "status": r.status_code, "tokens": r.json()["choices"][0]["token_ids"] if ok else r.text[:300],
            "replica": r.headers.get("x-hylorada-replica"), "affinity": r.headers.get("x-hylorada-affinity"),
            "version": r.headers.get("x-hylorada-adapter-version"), "retries": int(r.headers.get("x-hylorada-retries", 0))}


def zipf_names(names: list[str], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return rng.choices(names, weights=[1 / (k + 1) for k in range(len(names))], k=n)


def set_of(name: str) -> int:
    return int(name[2:]) % N_SETS


def test_both_replicas_list_the_same_models(cluster):
    url, _, names, *_ = cluster
    rows = replicas(url)
    lists = [sorted(m["id"] for m in r["models"]["data"]) for r in rows]
    assert len(rows) == 2 and lists[0] == lists[1] and set(names) <= set(lists[0]), lists


def test_zipf_traffic_is_right_and_stays_with_the_replica_that_holds_the_adapter(cluster):
    url, _, names, _, want, *_ = cluster
    with httpx.Client(base_url=url, headers=API, timeout=300) as http, ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda n: ask(http, n), zipf_names(names, N_ZIPF, seed=0)))
    wrong = [g for g in got if g["status"] != 200 or g["tokens"] != want[set_of(g["name"])]]
    assert not wrong, wrong[:5]
    assert len({g["replica"] for g in got}) == 2, "one replica served everything"
    hits = sum(g["affinity"] == "hit" for g in got)
    rate = hits / len(got)
    print(f"\naffinity: {hits} of {len(got)} adapter requests on a replica that held the adapter ({rate:.1%}); "
          f"loads {sum(g['affinity'] == 'load' for g in got)}, names asked {len({g['name'] for g in got})}")
    assert rate >= 0.90, rate


def test_metrics_are_one_text_with_each_replicas_series(cluster):
    from prometheus_client.parser import text_string_to_metric_families
    url, *_ = cluster
    text = httpx.get(url + "/metrics", timeout=60).text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    tags = {s.labels.get("replica") for s in fams["vllm:num_requests_running"].samples}
    assert len(tags) == 2 and None not in tags, tags
    info = fams["vllm:lora_requests_info"].samples
    assert {s.labels["replica"] for s in info} <= tags and all("@v" not in s.labels["running_lora_adapters"]
                                                                for s in info)


def version_on(url: str, name: str) -> dict[str, int | None]:
    out = {}
    for r in replicas(url):
        rows = [a for a in r["adapters"].get("data", []) if a["name"] == name]
        out[r["replica"]] = rows[0]["version"] if rows else None
    return out


def test_a_hot_swap_is_seen_by_both_replicas_and_never_undone(cluster):
    url, adapters, names, sets, want, *_ = cluster
    name = names[0]                                           # weight set 0 -> weight set 1
    before = version_on(url, name)
    assert len(before) == 2 and None not in before.values(), before
    for f in sets[1].iterdir():
        if f.name != "bench_stamp.json":
            shutil.copy(f, adapters / name / f.name)
    time.sleep(0.05)
    (adapters / name / ".ready").touch()
    deadline, now = time.time() + 60, before
    while time.time() < deadline:
        now = version_on(url, name)
        if len(now) == 2 and all(now[t] is not None and now[t] > before[t] for t in before):
            break
        time.sleep(0.5)
    assert len(now) == 2 and all(now[t] > before[t] for t in before), (before, now)
    with httpx.Client(base_url=url, headers=API, timeout=120) as http:
        got = [ask(http, name) for _ in range(12)]
    assert all(g["status"] == 200 and g["tokens"] == want[1] for g in got), got[:3]
    assert all(g["version"] == str(now[g["replica"]]) for g in got), (now, got)
    # the stronger rule on demand: the admin load route returns once every replica serves the folder as it is now
    for f in sets[0].iterdir():
        if f.name != "bench_stamp.json":
            shutil.copy(f, adapters / name / f.name)
    r = httpx.post(f"{url}/v1/adapters/{name}/load", headers=ADMIN, timeout=120)
    assert r.status_code == 200 and len(r.json()["replicas"]) == 2, r.text
    after = version_on(url, name)
    assert all(after[t] > now[t] for t in now), (now, after)
    with httpx.Client(base_url=url, headers=API, timeout=120) as http:
        got = [ask(http, name) for _ in range(6)]
    assert all(g["status"] == 200 and g["tokens"] == want[0] and g["version"] == str(after[g["replica"]])
               for g in got), (after, got)


def test_a_replica_killed_mid_load_fails_no_request_and_ray_replaces_it(cluster):
    url, _, names, _, want, pids, root = cluster
    rows = replicas(url)
    assert len(rows) == 2
    victim = rows[0]
    results, stop_at = [], time.time() + 40
    lock = threading.Lock()

    def client(seed: int):
        with httpx.Client(base_url=url, headers=API, timeout=180) as http:
            for name in zipf_names(names, 200, seed):
                if time.time() > stop_at:
                    break
                try:
                    g = ask(http, name)
                except httpx.HTTPError as e:
                    g = {"name": name, "status": None, "tokens": repr(e)}
                with lock:
                    results.append(g)
    threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    time.sleep(6)
    os.killpg(victim["pid"], signal.SIGKILL)
    for t in threads:
        t.join(timeout=400)
    failed = [g for g in results if g["status"] != 200]
    wrong = [g for g in results if g["status"] == 200 and g["tokens"] != want[set_of(g["name"])]]
    retried = [g for g in results if g.get("retries")]
    print(f"\nkill mid-load: {len(results)} requests, {len(failed)} failed, {len(wrong)} wrong, {len(retried)} "
          f"retried by the ingress ({sum(g['retries'] for g in retried)} retries)")
    assert len(results) >= 20 and not failed and not wrong, (failed[:3], wrong[:3])
    assert retried, "no request met the killed replica: the kill was not mid-load"
    assert len({g["replica"] for g in results if g["status"] == 200}) >= 2
    deadline, now = time.time() + RESTART_S, []
    while time.time() < deadline:
        now = replicas(url)
        pids.update(r["pid"] for r in now if "pid" in r)
        if len(now) == 2 and victim["replica"] not in {r["replica"] for r in now}:
            break
        time.sleep(3)
    assert len(now) == 2 and victim["replica"] not in {r["replica"] for r in now}, \
        (now, tail_replicas(root))
    with httpx.Client(base_url=url, headers=API, timeout=120) as http:
        after = [ask(http, n) for n in names[1:9]]
    assert all(g["status"] == 200 and g["tokens"] == want[set_of(g["name"])] for g in after), after[:3]
