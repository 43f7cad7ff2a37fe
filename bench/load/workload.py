"""Seeded S-LoRA-style request generation: the same config and seed give the same requests.

Every system in a comparison is driven by the identical list this module returns, so differences
in the numbers come from the servers, never from the workload.

Knobs (S-LoRA §7): number of adapters n, power-law popularity alpha (adapter k, 1-based, is drawn
with probability k^-alpha / sum_j j^-alpha; alpha = 0 is uniform), request rate lambda with Poisson
(cv = 1) or gamma (shape 1/cv^2) inter-arrival gaps, prompt/output lengths uniform in ranges.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

PROMPT_VOCAB = (3, 500)   # token ids for synthetic prompts: skips <s> </s> <pad> (0..2), fits every tiny vocab (>= 512)


@dataclass(frozen=True)
class Request:
    """One request of the workload. arrival_s is relative to the start of the run."""
    index: int
    arrival_s: float
    adapter: str              # the OpenAI `model` field: an adapter name or the base name
    prompt_tokens: tuple[int, ...]
    output_len: int

    def to_json(self) -> dict:
        return asdict(self) | {"prompt_tokens": list(self.prompt_tokens)}


def zipf_probs(n: int, alpha: float) -> np.ndarray:
    """p[k-1] = k^-alpha / sum_j j^-alpha for k = 1..n (alpha >= 0; 0 is uniform)."""
    if n < 1 or alpha < 0:
        raise ValueError(f"zipf_probs needs n >= 1 and alpha >= 0 (got n={n}, alpha={alpha})")
    w = np.arange(1, n + 1, dtype=np.float64) ** (-alpha)
    return w / w.sum()


def interarrival_gaps(rng: np.random.Generator, n: int, rate: float, cv: float) -> np.ndarray:
    """n gaps in seconds with mean 1/rate and coefficient of variation cv.

    rate = inf: every gap 0 (all requests at t = 0; the concurrency cap is then the only pacing).
    cv = 1 is Poisson (exponential gaps); otherwise gamma(shape=1/cv^2, scale=cv^2/rate) — cv > 1 is burstier.
    """
    if math.isinf(rate):
        return np.zeros(n)
    if rate <= 0 or cv <= 0:
        raise ValueError(f"rate and cv must be > 0 (got rate={rate}, cv={cv})")
    shape = 1.0 / (cv * cv)
    return rng.gamma(shape, 1.0 / (shape * rate), size=n)


def generate(*, num_requests: int, adapters: list[str], alpha: float, rate: float, cv: float,
             prompt_len: tuple[int, int], output_len: tuple[int, int], seed: int,
             vocab: tuple[int, int] = PROMPT_VOCAB) -> list[Request]:
    """The request list. Lengths are uniform integers in [lo, hi] inclusive; arrivals are cumulative gaps
    with the first request at t = 0. Independent streams per quantity, so changing the rate keeps the
    adapters and lengths of every request (a rate sweep varies only the timing)."""
    if not adapters:
        raise ValueError("at least one adapter (or the base model name) is needed")
    ss = np.random.SeedSequence(seed)
    r_adapter, r_arrival, r_plen, r_olen, r_tok = (np.random.default_rng(s) for s in ss.spawn(5))
    choice = r_adapter.choice(len(adapters), size=num_requests, p=zipf_probs(len(adapters), alpha))
    gaps = interarrival_gaps(r_arrival, num_requests, rate, cv)
    arrivals = np.concatenate([[0.0], np.cumsum(gaps[1:])]) if num_requests else np.zeros(0)
    plens = r_plen.integers(prompt_len[0], prompt_len[1] + 1, size=num_requests)
    olens = r_olen.integers(output_len[0], output_len[1] + 1, size=num_requests)
    out = []
    for i in range(num_requests):
        toks = r_tok.integers(vocab[0], vocab[1], size=int(plens[i]))
        out.append(Request(index=i, arrival_s=float(arrivals[i]), adapter=adapters[int(choice[i])],
                           prompt_tokens=tuple(int(t) for t in toks), output_len=int(olens[i])))
    return out


def fingerprint(requests: list[Request]) -> str:
    """A short hash of the request list (recorded in results so two runs can be shown to share requests)."""
    import hashlib
    h = hashlib.sha256()
    for r in requests:
        h.update(f"{r.index}|{r.arrival_s:.9f}|{r.adapter}|{r.output_len}|".encode())
        h.update(np.asarray(r.prompt_tokens, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]
