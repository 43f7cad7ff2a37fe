"""Workload generation: determinism, Zipf popularity and arrival statistics, lengths."""
import math

import numpy as np
import pytest

from bench.load import workload

ARGS = dict(num_requests=400, adapters=[f"a{i}" for i in range(8)], alpha=1.0, rate=4.0, cv=1.0,
            prompt_len=(8, 40), output_len=(4, 9), seed=7)


def test_same_seed_same_requests():
    a, b = workload.generate(**ARGS), workload.generate(**ARGS)
    assert a == b
    assert workload.fingerprint(a) == workload.fingerprint(b)


def test_other_seed_other_requests():
    a, b = workload.generate(**ARGS), workload.generate(**ARGS | {"seed": 8})
    assert workload.fingerprint(a) != workload.fingerprint(b)


def test_rate_changes_only_timing():
    a, b = workload.generate(**ARGS), workload.generate(**ARGS | {"rate": math.inf})
    assert [(r.adapter, r.prompt_tokens, r.output_len) for r in a] == [(r.adapter, r.prompt_tokens, r.output_len) for r in b]
    assert all(r.arrival_s == 0.0 for r in b)


def test_lengths_and_vocab_in_range():
    for r in workload.generate(**ARGS):
        assert 8 <= len(r.prompt_tokens) <= 40 and 4 <= r.output_len <= 9
        assert all(workload.PROMPT_VOCAB[0] <= t < workload.PROMPT_VOCAB[1] for t in r.prompt_tokens)
    lens = {len(r.prompt_tokens) for r in workload.generate(**ARGS)}
    assert min(lens) == 8 and max(lens) == 40      # both ends reachable (inclusive range)


def test_zipf_probs_formula():
    p = workload.zipf_probs(4, 1.0)
    h = 1 + 1 / 2 + 1 / 3 + 1 / 4
    np.testing.assert_allclose(p, [1 / h, 1 / 2 / h, 1 / 3 / h, 1 / 4 / h])
    np.testing.assert_allclose(workload.zipf_probs(5, 0.0), [0.2] * 5)
    with pytest.raises(ValueError):
        workload.zipf_probs(0, 1.0)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_zipf_popularity_statistics(alpha):
    n, names = 20_000, [f"a{i}" for i in range(8)]
    reqs = workload.generate(**ARGS | {"num_requests": n, "alpha": alpha, "prompt_len": (1, 1), "output_len": (1, 1)})
    freq = np.bincount([names.index(r.adapter) for r in reqs], minlength=8) / n
    p = workload.zipf_probs(8, alpha)
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-3)


@pytest.mark.parametrize("cv", [1.0, 0.5, 2.0])
def test_arrival_statistics(cv):
    rng = np.random.default_rng(0)
    g = workload.interarrival_gaps(rng, 50_000, rate=5.0, cv=cv)
    assert abs(g.mean() - 0.2) < 0.01
    assert abs(g.std() / g.mean() - cv) < 0.05 * cv
    assert np.all(g >= 0)


def test_arrivals_start_at_zero_and_increase():
    reqs = workload.generate(**ARGS)
    t = [r.arrival_s for r in reqs]
    assert t[0] == 0.0 and all(b >= a for a, b in zip(t, t[1:]))
    assert abs(t[-1] / (len(t) - 1) - 1 / ARGS["rate"]) < 0.05
