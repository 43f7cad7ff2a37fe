"""No adapter content stops start-up: a server of its own started with four bogus-RoPE folders (they used to outvote
the good ones: ValueError at start), a 100,000-deep hylorada.json (RecursionError at start), a 1,100-deep folder
(os.walk's RecursionError at start), a name with a trailing newline and absurd deltas beside the demo adapters.
It starts, lists each bad one as refused with its reason, and the base and the demo adapters answer the served-form
reference's greedy tokens."""
from __future__ import annotations

import httpx
import pytest

from bench.soak import bad_adapters as bad
from .conftest import ADMIN_KEY, API_KEY, fresh_adapters, start, stop

pytestmark = pytest.mark.vllm
DEMO = ("demo-lora", "demo-dora", "demo-hylorada")
PROMPT = [5, 77, 140, 33, 9]
N_NEW = 6
CASES = ("bogus-rope", "deep-json", "deep-nesting", "newline-name", "absurd-delta")


@pytest.fixture(scope="module")
def started(demo_files):
    root, base, built = demo_files
    adapters = fresh_adapters(root, built)
    names, srv = {}, None
    try:
        for case in CASES:
            names[case] = bad.BUILDERS[case](built / "demo-lora", adapters / f"start-{case}", base).name
        for i in range(3):                              # four bogus-RoPE folders against three good ones
            names[f"bogus-rope-{i}"] = bad.bogus_rope(built / "demo-lora", adapters / f"start-bogus-rope-{i}").name
        srv = start(root, adapters, base, built)
        yield srv, names
    finally:
        if srv is not None:
            stop(srv)
        bad.remove(adapters / "start-deep-nesting")     # too deep for pytest's own clean-up (rmtree, 3.11)


def test_server_starts_and_refuses_each_bad_adapter_with_its_reason(started):
    srv, names = started
    h = {"Authorization": f"Bearer {ADMIN_KEY}"}
    st = {a["name"]: a for a in httpx.get(srv.url + "/v1/adapters", headers=h, timeout=30).json()["data"]}
    for key, name in names.items():
        expect = bad.EXPECT[key.rsplit("-", 1)[0] if key[-1].isdigit() else key]
        assert st[name]["status"] == "refused" and expect in st[name]["reason"], st[name]
    assert all(st[n]["status"] == "ready" for n in DEMO)
    models = {m["id"] for m in httpx.get(srv.url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"},
                                         timeout=30).json()["data"]}
    assert set(DEMO) <= models and not set(names.values()) & models


def test_base_and_good_adapters_answer_the_reference(started):
    from hylorada.format.load import load_served
    from hylorada.reference.served import ServedReference

    srv, _ = started
    ref = ServedReference(srv.base)
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as http:
        for name in (None, *DEMO):
            ad = load_served(srv.adapters / name) if name else None
            want = ref.greedy([PROMPT], [ad], N_NEW)[0][0]
            r = http.post("/v1/completions", json={"model": name or "tiny-llama", "prompt": PROMPT, "max_tokens": N_NEW,
                                                   "temperature": 0, "ignore_eos": True, "return_token_ids": True})
            assert r.status_code == 200 and r.json()["choices"][0]["token_ids"] == list(want), (name, r.text[:300])


def test_keys_given_as_flags_guard_this_server(started):
    """This server got --api-key / --admin-key (the shared one gets them from the environment: test_auth.py)."""
    srv, _ = started
    assert srv.keys == "flags"
    assert httpx.get(srv.url + "/v1/models", timeout=30).status_code == 401
    assert httpx.get(srv.url + "/v1/adapters", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30).status_code == 401
    assert httpx.get(srv.url + "/v1/adapters", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                     timeout=30).status_code == 200
