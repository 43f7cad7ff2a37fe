"""bench.soak.report.growth: the soak's memory verdict (slope after warm-up, per 1000 requests, per window) on
synthetic samples whose answer is known. No server."""
from __future__ import annotations

import pytest

from bench.soak.report import growth


def samples(minutes: float, rss, every_s: float = 5.0, req_per_s: float = 20.0) -> list[dict]:
    out, t = [], 0.0
    while t <= minutes * 60:
        mb = rss(t / 60)
        out.append({"t": t, "rss_mb": mb, "requests": int(t * req_per_s), "by_process": {"w": mb - 100, "a": 100.0}})
        t += every_s
    return out


def test_linear_growth_is_found_total_per_process_and_per_1000_requests():
    g = growth(samples(30, lambda m: 1000 + 2.0 * m), warmup_s=300)
    assert g["total"]["mb_per_min"] == pytest.approx(2.0, abs=1e-3)
    assert g["total"]["mb_per_1000_requests"] == pytest.approx(2.0 / 1.2, abs=1e-2)     # 1,200 requests a minute
    assert g["by_process"]["w"]["mb_per_min"] == pytest.approx(2.0, abs=1e-3)
    assert g["by_process"]["a"]["mb_per_min"] == pytest.approx(0.0, abs=1e-9)
    assert g["total"]["mb_per_min_by_window"] == pytest.approx([2.0] * 3, abs=1e-3)


def test_growth_that_levels_off_shows_in_the_last_window():
    """A cache filling up to 25 minutes, then flat: the overall slope is positive, the last windows are zero."""
    g = growth(samples(60, lambda m: 1000 + 3.0 * min(m, 25.0)), warmup_s=600, windows=5)
    w = g["total"]["mb_per_min_by_window"]
    assert len(w) == 5 and w[0] == pytest.approx(3.0, abs=1e-3)
    assert w[-1] == pytest.approx(0.0, abs=1e-9) and w[-2] == pytest.approx(0.0, abs=1e-9)
    assert g["total"]["mb_per_min"] > 0.5


def test_too_few_samples_after_warm_up_is_no_verdict():
    assert growth(samples(1, lambda m: 1000.0), warmup_s=50, windows=3) == {}
