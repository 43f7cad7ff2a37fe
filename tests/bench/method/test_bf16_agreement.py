"""bench.method.bf16_agreement's counting (no engine): the agreeing prefix stops at the first difference, and
the summary's shares come from it."""
from __future__ import annotations

from bench.method.bf16_agreement import agreeing_prefix, summarize


def test_agreeing_prefix_stops_at_the_first_difference():
    assert agreeing_prefix([1, 2, 3, 4], [1, 2, 3, 4]) == 4
    assert agreeing_prefix([1, 2, 9, 4], [1, 2, 3, 4]) == 2          # position 3 agrees again but does not count
    assert agreeing_prefix([7], [1]) == 0


def test_summary_shares():
    s = summarize([4, 4, 2, 0], new=4)
    assert s["answers"] == 4 and s["identical"] == 0.5 and s["mean_agreeing_prefix"] == 2.5
