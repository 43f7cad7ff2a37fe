"""Bad adapters dropped into the running server's DIR/ (the shared session server): each is refused or deferred with
a log line and a status in GET /v1/adapters, never listed or served, while traffic to the good adapters keeps
getting the same tokens. Cases: bench/soak/bad_adapters.py, plus case clashes, a slow partial copy and a folder
replaced many times quickly. Everything this module adds to DIR/ is removed at the end."""
from __future__ import annotations

import os
import shutil
import threading
import time
import uuid

import httpx
import pytest

from bench.soak.bad_adapters import BUILDERS, EXPECT, remove
from hylorada_serve.watcher import shown
from .conftest import ADMIN_KEY, API_KEY

pytestmark = pytest.mark.vllm
DEMO = ("demo-lora", "demo-dora", "demo-hylorada")
MODELS = (*DEMO, "tiny-llama")      # the good adapters and the base: each must answer as before bad ones arrived
PROMPT = [5, 77, 140, 33, 9]
WAIT_S = 60


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


def greedy(http: httpx.Client, model: str) -> tuple[int, list[int] | None]:
    r = http.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 6, "temperature": 0,
                                           "ignore_eos": True, "return_token_ids": True})
    return r.status_code, (r.json()["choices"][0]["token_ids"] if r.status_code == 200 else None)


def adapters(http: httpx.Client) -> dict[str, dict]:
    r = http.get("/v1/adapters", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    return {a["name"]: a for a in r.json()["data"]}


def wait_for(what: str, pred, timeout: float = WAIT_S):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (got := pred()):
            return got
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def remove_served(http, path) -> None:
    """Delete DIR/name and wait (bounded) until the server stops listing it, so later modules see a clean DIR/."""
    remove(path)
    wait_for(f"{path.name} unlisted", lambda: path.name not in {m["id"] for m in http.get("/v1/models").json()["data"]},
             timeout=30)


class Traffic:
    """Greedy requests to the good adapters in a bounded background loop; every answer must equal the baseline."""

    def __init__(self, http, baseline: dict, max_s: float = 240):
        self.http, self.baseline, self.max_s = http, baseline, max_s
        self.stop, self.bad, self.n = threading.Event(), [], 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        t0 = time.time()
        while not self.stop.is_set() and time.time() - t0 < self.max_s:
            model = MODELS[self.n % len(MODELS)]
            try:
                got = greedy(self.http, model)
            except httpx.HTTPError as e:
                got = (type(e).__name__, None)
            if got != (200, self.baseline[model]):
                self.bad.append((model, got))
            self.n += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=60)


@pytest.fixture(scope="module")
def baseline(http):
    return {m: greedy(http, m)[1] for m in MODELS}


@pytest.fixture(scope="module")
def dropped(server, http, baseline):
    """Every broken case written into DIR/ while traffic runs; waits until each is refused."""
    sentinel = server.adapters.parent / f"unpickled-{uuid.uuid4().hex[:6]}"
    names = {case: f"bad-{case}" for case in BUILDERS}
    extra = []
    try:
        with Traffic(http, baseline) as traffic:
            for case, build in BUILDERS.items():
                kw = {"sentinel": sentinel} if case == "pickle-only" else {}
                if case.startswith("symlink"):
                    kw = {"outside": server.adapters.parent / f"outside-{uuid.uuid4().hex[:6]}"}
                    extra.append(kw["outside"])
                names[case] = build(server.spare / "demo-lora", server.adapters / names[case], server.base, **kw).name
            deadline = time.time() + WAIT_S
            while time.time() < deadline and any(adapters(http).get(n, {}).get("status") != "refused"
                                                 for n in names.values()):
                time.sleep(0.1)
            st = adapters(http)
            left = {n: st.get(n) for n in names.values() if st.get(n, {}).get("status") != "refused"}
            assert not left, f"not refused after {WAIT_S} s: {left}"
        yield names, traffic, sentinel
    finally:                                              # also when a build or the wait failed
        for p in [*(server.adapters / n for n in names.values()), *extra, sentinel]:
            remove(p)


@pytest.mark.parametrize("case", sorted(BUILDERS))
def test_bad_adapter_is_refused_with_reason_and_log_line(case, dropped, http, server):
    names = dropped[0]
    name = names[case]
    st = adapters(http)[name]
    assert st["status"] == "refused" and EXPECT[case] in st["reason"], st
    assert st["version"] is None
    log = server.log.read_text(errors="replace")
    assert any(line for line in log.splitlines() if f"adapter {shown(name)} refused" in line and EXPECT[case] in line)
    assert name not in {m["id"] for m in http.get("/v1/models").json()["data"]}
    code, _ = greedy(http, name)
    assert code == 404


def test_good_adapters_kept_serving_while_bad_ones_arrived(dropped, http, baseline):
    _, traffic, _ = dropped
    assert traffic.n >= len(MODELS) and traffic.bad == [], traffic.bad[:5]
    assert http.get("/health").status_code == 200
    assert {m: greedy(http, m) for m in MODELS} == {m: (200, baseline[m]) for m in MODELS}


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_huge_safetensors_header_is_refused_fast_and_small(server, http, baseline):
    """A ~60 MB header of 1M zero-size tensors: refused from the header's length (it took 19 s and +1.28 GB of the
    API server's RSS when the reader parsed it)."""
    dst = server.spare.parent / f"huge-header-{uuid.uuid4().hex[:6]}"
    BUILDERS["huge-header"](server.spare / "demo-lora", dst)     # built outside DIR/, then moved in at once
    before = rss_bytes(server.proc.pid)
    t0 = time.time()
    os.rename(dst, server.adapters / "huge-header")
    try:
        st = wait_for("huge header refused", lambda: adapters(http).get("huge-header", {}).get("status") == "refused"
                      and adapters(http)["huge-header"], timeout=30)
        took, grew = time.time() - t0, rss_bytes(server.proc.pid) - before
        assert "safetensors header of" in st["reason"] and took < 10, (took, st)
        assert grew < 200 << 20, f"API server RSS grew by {grew >> 20} MiB"
        assert greedy(http, "demo-lora") == (200, baseline["demo-lora"])
    finally:
        remove_served(http, server.adapters / "huge-header")


def test_pickle_is_never_unpickled(dropped):
    assert not dropped[2].exists(), "the pickle in adapter_model.bin was loaded"


def test_case_clash_refused_and_original_keeps_serving(server, http, baseline):
    twin = server.adapters / "Demo-Lora"
    shutil.copytree(server.spare / "demo-dora", twin)                 # different weights under a case twin
    try:
        st = wait_for("case twin refused", lambda: adapters(http).get("Demo-Lora", {}).get("status") == "refused"
                      and adapters(http)["Demo-Lora"])
        assert "differs only by case" in st["reason"]
        assert "adapter Demo-Lora refused" in server.log.read_text(errors="replace")
        assert greedy(http, "demo-lora") == (200, baseline["demo-lora"])
        assert greedy(http, "Demo-Lora")[0] == 404
        assert adapters(http)["demo-lora"]["version"] == 1
    finally:
        remove(twin)


def test_slow_partial_copy_is_deferred_then_loaded(server, http, baseline):
    """Files trickle in (chunks every 0.2 s, stable-seconds is 1): never listed or refused while partial, then
    served once complete, with the tokens of the complete files."""
    name, src = "slow-copy", server.spare / "demo-lora"
    dst, seen, done = server.adapters / name, [], threading.Event()

    def writer():
        dst.mkdir()
        for f in sorted(src.iterdir(), key=lambda f: f.name != "adapter_config.json"):
            data = f.read_bytes()
            with open(dst / f.name, "wb") as fh:
                for i in range(0, len(data), max(1, len(data) // 6)):
                    fh.write(data[i:i + max(1, len(data) // 6)])
                    fh.flush()
                    time.sleep(0.2)
        done.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        while not done.is_set():
            st = adapters(http).get(name)
            seen.append(st["status"] if st else None)
            assert name not in {m["id"] for m in http.get("/v1/models").json()["data"]}
            time.sleep(0.1)
        t.join(timeout=30)
        st = wait_for("slow copy ready", lambda: adapters(http).get(name, {}).get("status") == "ready"
                      and adapters(http)[name])
        assert "waiting" in seen and "refused" not in seen and "ready" not in seen, seen
        assert st["version"] == 1 and st["events"].get("refused", 0) == 0, st
        assert greedy(http, name) == (200, baseline["demo-lora"])
    finally:
        t.join(timeout=30)
        remove_served(http, dst)


def test_folder_replaced_many_times_quickly_serves_the_last_content(server, http, baseline):
    """12 replacements 0.05-0.15 s apart (atomic renames and in-place rewrites, alternating the demo-lora and
    demo-dora weights): no error for the other adapters, and in the end the last content serves, whole."""
    name = "flip"
    dst = server.adapters / name
    sources = [server.spare / "demo-lora", server.spare / "demo-dora"]
    try:
        with Traffic(http, baseline) as traffic:
            for i in range(12):
                src = sources[i % 2]
                if i % 3 == 2 and dst.exists():                      # in place, file by file
                    for f in src.iterdir():
                        shutil.copyfile(f, dst / f.name)
                else:                                                # a new folder by one rename
                    tmp = server.adapters / f".flip.tmp-{uuid.uuid4().hex[:6]}"
                    shutil.copytree(src, tmp)
                    old = server.adapters / f".flip.old-{uuid.uuid4().hex[:6]}"
                    if dst.exists():
                        dst.rename(old)
                    tmp.rename(dst)
                    remove(old)
                time.sleep(0.05 + 0.01 * (i % 10))
            last = "demo-lora" if 11 % 2 == 0 else "demo-dora"
            wait_for("last content served", lambda: greedy(http, name) == (200, baseline[last]), timeout=WAIT_S)
        assert traffic.bad == [], traffic.bad[:5]
        st = adapters(http)[name]
        assert st["status"] == "ready" and st["version"] >= 1, st
        wait_for("retired versions freed", lambda: http.get(
            "/v1/adapters", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()["retired_not_yet_freed"] == 0)
    finally:
        remove_served(http, dst)


def test_bad_update_leaves_the_previous_version_serving(server, http, baseline):
    """A served adapter replaced by broken content (NaN) keeps serving its last good version, with the refusal as
    its reason; fixed content then becomes a new version."""
    from bench.soak.bad_adapters import nan_weights

    name, dst = "update-me", server.adapters / "update-me"
    try:
        shutil.copytree(server.spare / "demo-lora", dst)
        wait_for("v1 ready", lambda: adapters(http).get(name, {}).get("version") == 1)
        bad = server.adapters.parent / f"nan-{uuid.uuid4().hex[:6]}"
        nan_weights(server.spare / "demo-lora", bad)
        shutil.copyfile(bad / "adapter_model.safetensors", dst / "adapter_model.safetensors")
        shutil.rmtree(bad)
        st = wait_for("bad update refused", lambda: (adapters(http)[name]["reason"] or "").find("NaN") >= 0
                      and adapters(http)[name])
        assert st["status"] == "ready" and st["version"] == 1, st
        assert greedy(http, name) == (200, baseline["demo-lora"])
        for f in (server.spare / "demo-dora").iterdir():
            shutil.copyfile(f, dst / f.name)
        # a refused attempt takes no number (numbers count the versions that served), so the fix is v2
        wait_for("v2 after the fix", lambda: adapters(http)[name]["version"] == 2
                 and adapters(http)[name]["reason"] is None)
        assert greedy(http, name) == (200, baseline["demo-dora"])
    finally:
        remove_served(http, dst)
