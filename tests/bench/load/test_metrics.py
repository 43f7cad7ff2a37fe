"""Percentile math and the per-request / per-adapter summary."""
import math
import random

import numpy as np
import pytest

from bench.load.metrics import RequestRecord, dist, percentile, summarize


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101])
def test_percentile_matches_numpy_linear(n):
    rnd = random.Random(n)
    v = [rnd.uniform(0, 10) for _ in range(n)]
    for q in (0, 1, 25, 50, 90, 99, 99.9, 100):
        assert percentile(v, q) == pytest.approx(float(np.percentile(v, q)), rel=1e-12, abs=1e-12)


def test_percentile_edges():
    assert math.isnan(percentile([], 50))
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 90) == 9.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    d = dist([1.0, 2.0, 3.0, 4.0])
    assert d["n"] == 4 and d["mean"] == 2.5 and d["p50"] == 2.5


def _rec(i, adapter, ttft, e2e, n, error=None):
    return RequestRecord(i, adapter, 10, n, send_s=0.0, ttft_s=ttft, e2e_s=e2e, output_tokens=n,
                         itl_s=[(e2e - ttft) / max(n - 1, 1)] * (n - 1), error=error)


def test_tpot_definition():
    r = _rec(0, "a", 0.5, 2.5, 5)
    assert r.tpot_s == pytest.approx(0.5)               # (2.5 - 0.5) / (5 - 1)
    assert _rec(1, "a", 0.5, 0.5, 1).tpot_s is None      # one token: no TPOT
    assert RequestRecord(2, "a", 1, 1, error="x").tpot_s is None


def test_summary_overall_and_per_adapter():
    recs = [_rec(0, "a", 0.1, 1.1, 11), _rec(1, "a", 0.2, 2.2, 11), _rec(2, "b", 0.3, 1.3, 6),
            RequestRecord(3, "b", 10, 6, error="HTTP 500")]
    s = summarize(recs, wall_s=4.0)
    o = s["overall"]
    assert (o["requests"], o["completed"], o["errors"], o["output_tokens"]) == (4, 3, 1, 28)
    assert o["output_tok_per_s"] == pytest.approx(7.0) and o["req_per_s"] == pytest.approx(0.75)
    assert o["ttft_s"]["p50"] == pytest.approx(0.2)
    assert s["per_adapter"]["a"]["output_tokens"] == 22 and s["per_adapter"]["b"]["errors"] == 1
    assert s["per_adapter"]["a"]["output_tok_per_s"] == pytest.approx(5.5)
    assert s["error_samples"] == ["HTTP 500"]


def test_cold_requests_are_each_adapters_first_by_send_time():
    recs = [RequestRecord(i, a, 8, 8, send_s=t, ttft_s=f, e2e_s=f + 1, output_tokens=8)
            for i, (a, t, f) in enumerate([("a", 0.2, 0.5), ("b", 0.1, 2.0), ("a", 0.0, 0.9), ("b", 0.3, 0.1),
                                           ("a", 0.4, 0.2)])]
    o = summarize(recs, wall_s=3.0)["overall"]
    # cold: a's first by send time is index 2 (0.0 s, TTFT 0.9), b's is index 1 (0.1 s, 2.0) — not the list order
    assert o["ttft_cold_s"]["n"] == 2 and o["ttft_cold_s"]["p99"] == pytest.approx(0.9 + 0.99 * 1.1)
    assert o["ttft_hot_s"]["n"] == 3 and o["ttft_hot_s"]["mean"] == pytest.approx((0.5 + 0.1 + 0.2) / 3)
    assert o["ttft_cold_s"]["mean"] == pytest.approx((0.9 + 2.0) / 2)
