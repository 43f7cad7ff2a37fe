"""Where each serving adapter lives (hylorada_serve/residency.py): rows for GET /v1/adapters and the residency
metrics, from a worker's answer (no vLLM here; the real RPC on the shared server: test_server.py
`test_adapters_show_where_they_live`)."""
from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from hylorada_serve import residency
from hylorada_serve.store import Version

RES = {"slots": [3], "host": {"3": 1000, "5": 2000}, "loads": {"3": 1, "5": 2, "9": 4}, "stamped_loads": {"5": 2},
       "capacity": {"slots": 4, "host": 8}}


class Engine:
    def __init__(self, answer=None, fail=False, silent=False):
        self.answer, self.fail, self.silent = answer, fail, silent

    async def collective_rpc(self, method, timeout=None):
        assert method == "hylorada_lora_residency" and timeout == residency.RPC_TIMEOUT_S
        if self.fail:
            raise RuntimeError("engine dead")
        if self.silent:                          # an engine core that has exited: the answer never comes
            await asyncio.Event().wait()
        return [self.answer]


def row(name, uid):
    return {"name": name, "status": "ready" if uid else "refused", "uid": uid}


def test_rows_say_slot_host_or_disk_with_bytes_and_loads():
    res = asyncio.run(residency.fetch(Engine(RES)))
    out = {r["name"]: r for r in residency.rows([row("a", 3), row("b", 5), row("c", 7), row("bad", None)], res)}
    assert (out["a"]["where"], out["a"]["host_bytes"], out["a"]["engine_loads"]) == ("slot", 1000, 1)
    assert (out["b"]["where"], out["b"]["host_bytes"], out["b"]["engine_loads"]) == ("host", 2000, 2)
    assert (out["c"]["where"], out["c"]["host_bytes"], out["c"]["engine_loads"]) == ("disk", None, 0)
    assert (out["bad"]["where"], out["bad"]["host_bytes"], out["bad"]["engine_loads"]) == (None, None, None)
    assert [out[n]["stamped_loads"] for n in ("a", "b", "c", "bad")] == [0, 2, 0, None]


def test_an_engine_that_cannot_answer_leaves_the_fields_null():
    assert asyncio.run(residency.fetch(Engine(fail=True))) is None
    assert residency.rows([row("a", 3)], None)[0]["where"] is None


def test_an_engine_that_never_answers_is_given_up_on(monkeypatch):
    """After shutdown the engine core is gone and vLLM's client would wait for ever: SIGTERM hung on it."""
    monkeypatch.setattr(residency, "RPC_TIMEOUT_S", 0.05)

    async def bounded():
        return await asyncio.wait_for(residency.fetch(Engine(silent=True)), 10.0)
    assert asyncio.run(bounded()) is None


def value(name, labels=None):
    return REGISTRY.get_sample_value(name, labels or {})


def test_metrics_count_loads_once_and_follow_residency():
    pub = residency.Published()
    serving = {n: Version(n, 1, uid, f"/p/{n}", ()) for n, uid in (("ra", 3), ("rb", 5), ("rc", 7))}
    before = value("hylorada_adapter_engine_loads_total", {"adapter": "rb"}) or 0
    pub.publish(asyncio.run(residency.fetch(Engine(RES))), serving)
    pub.publish(asyncio.run(residency.fetch(Engine(RES))), serving)           # the same answer counts nothing more
    assert value("hylorada_adapter_engine_loads_total", {"adapter": "rb"}) - before == 2
    assert [value("hylorada_adapters_resident", {"where": w}) for w in ("slot", "host", "disk")] == [1, 1, 1]
    assert value("hylorada_adapters_cache_bytes") == 3000
    evicted = {**RES, "slots": [], "host": {}, "loads": {**RES["loads"], "5": 3}}
    pub.publish(asyncio.run(residency.fetch(Engine(evicted))), serving)
    assert value("hylorada_adapter_engine_loads_total", {"adapter": "rb"}) - before == 3
    assert [value("hylorada_adapters_resident", {"where": w}) for w in ("slot", "host", "disk")] == [0, 0, 3]
