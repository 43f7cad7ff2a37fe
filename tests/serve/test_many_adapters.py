"""2,000 adapter folders on one server of its own (issue 18): 16 distinct seeded LoRA weight sets (rank 4, every
projection of the tiny base) behind 2,000 names, hard links in DIR/ (the server copies each into its own version).

  * `--startup-wait 0`: the server answers while the folders are still being validated, and a request for a name
    not yet validated waits for it instead of a 404;
  * mixed batches (8 concurrent requests over names of different weight sets, more sets than --max-loras 4
    slots): every answer equals `ServedReference` for that name's weight set, before and after every folder is in;
  * in the end `/v1/models` lists the base and all 2,000 names;
  * names of one weight set share one private copy (hard links, publish.Copies: 2,000 copies filled no disk);
  * the engine's CPU cache has a byte budget (`--max-cpu-lora-mb 0.4`, ~5 of these adapters) smaller than the
    working set: answers stay right, adapters are evicted and read again (engine_loads > 1), and the cache holds
    no more than the budget or the --max-loras newest.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .conftest import ADMIN_KEY, API_KEY, start, stop

pytestmark = pytest.mark.vllm
N_NAMES, N_SETS, RANK = 2000, 16, 4
BUDGET_MB = 0.4
PROMPT, N_NEW = [5, 77, 140, 33, 9, 300], 6
API = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def many(demo_files):
    from bench.compare.adapters import build_peft, build_served_lora
    from hylorada.format.load import load_served
    from hylorada.reference.served import ServedReference

    root, base, built = demo_files
    cache = Path(tempfile.mkdtemp(prefix="many-sets-", dir=root))
    sets = build_served_lora(base, build_peft(base, N_SETS, cache=cache, rank=RANK), cache=cache)
    want = [toks for toks, _ in ServedReference(base).greedy([PROMPT] * N_SETS, [load_served(s) for s in sets],
                                                              N_NEW)]
    assert len({tuple(w) for w in want}) > N_SETS // 2, "the weight sets are not told apart by their tokens"
    adapters = Path(tempfile.mkdtemp(prefix="adapters-many-", dir=root))
    names = [f"m-{i:04d}" for i in range(N_NAMES)]
    for i, name in enumerate(names):
        (adapters / name).mkdir()
        for f in sets[i % N_SETS].iterdir():
            if f.name != "bench_stamp.json":
                os.link(f, adapters / name / f.name)
    return root, base, built, adapters, names, want


def answer(http: httpx.Client, name: str) -> tuple[str, int, list[int] | None]:
    r = http.post("/v1/completions", json={"model": name, "prompt": PROMPT, "max_tokens": N_NEW, "temperature": 0,
                                           "ignore_eos": True, "return_token_ids": True})
    return name, r.status_code, (r.json()["choices"][0]["token_ids"] if r.status_code == 200 else r.text[:200])


def check_round(url: str, names: list[str], want: list[list[int]]) -> None:
    with httpx.Client(base_url=url, headers=API, timeout=300) as http, ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda n: answer(http, n), names))
    wrong = [(n, code, toks, want[int(n[2:]) % N_SETS]) for n, code, toks in got
             if code != 200 or toks != want[int(n[2:]) % N_SETS]]
    assert not wrong, wrong[:5]


def test_two_thousand_names_answer_with_their_own_weights_while_and_after_they_load(many):
    root, base, built, adapters, names, want = many
    srv = start(root, adapters, base, built, extra=("--startup-wait", "0", "--max-cpu-loras", "16",
                                                             "--max-cpu-lora-mb", str(BUDGET_MB)))
    try:
        rng = random.Random(0)
        early = names[-40:] + rng.sample(names[:-40], 40)          # the last names are validated last: they wait
        rng.shuffle(early)
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            rows = http.get("/v1/adapters", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()["data"]
        pending_at_start = sum(r["status"] == "loading" for r in rows)
        check_round(srv.url, early, want)
        deadline = time.time() + 600
        with httpx.Client(base_url=srv.url, headers=API, timeout=30) as http:
            while time.time() < deadline:
                listed = {m["id"] for m in http.get("/v1/models").json()["data"]}
                if len(listed) == N_NAMES + 1:
                    break
                time.sleep(1)
        assert set(names) <= listed and len(listed) == N_NAMES + 1, len(listed)
        check_round(srv.url, rng.sample(names, 80), want)
        assert pending_at_start > 0, "every folder was loaded before the first request: nothing waited"
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            body = http.get("/v1/adapters", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
        rows = [r for r in body["data"] if r["status"] == "ready"]
        cached = [r for r in rows if r["where"] in ("slot", "host")]
        size = rows[0]["size_bytes"]
        assert BUDGET_MB * (1 << 20) < N_SETS * size, "the budget is not smaller than the working set"
        assert sum(r["host_bytes"] for r in cached) <= BUDGET_MB * (1 << 20) or len(cached) <= 4, cached
        assert max(r["engine_loads"] for r in rows) >= 2, "nothing was evicted and read again"
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            copies = http.get("/health/details", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
        from hylorada_serve.publish import COPIED_FILES                  # names of one set share their private copy:
        files = sum((adapters / names[0] / f).is_file() for f in COPIED_FILES)
        assert copies["private_copies"]["files_linked"] >= files * (N_NAMES - 4 * N_SETS), copies   # <= 4 at once
    finally:
        stop(srv)
        shutil.rmtree(adapters, ignore_errors=True)
