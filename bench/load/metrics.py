"""Per-request records and their summary: TTFT, TPOT, ITL, end-to-end latency, throughput, percentiles.

Definitions (the ones vLLM's and S-LoRA's benchmarks use):
  TTFT  = first streamed chunk time - send time
  TPOT  = (e2e - TTFT) / (output_tokens - 1)             (mean time per output token after the first)
  ITL   = gaps between consecutive streamed chunks        (inter-token latency, pooled over requests)
  e2e   = last chunk (or response end) time - send time
  throughput = completed requests / wall, output tokens / wall, wall = first send -> last completion
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    index: int
    adapter: str
    prompt_tokens: int
    output_len_requested: int
    send_s: float = 0.0               # relative to the run start
    ttft_s: float | None = None
    e2e_s: float | None = None
    output_tokens: int = 0            # from the server's usage when reported, else streamed chunks
    itl_s: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.e2e_s is not None

    @property
    def tpot_s(self) -> float | None:
        if not self.ok or self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    def to_json(self) -> dict:
        return asdict(self) | {"tpot_s": self.tpot_s}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default 'linear' method): rank = q/100 * (n-1).

    Semantics: sorted v; i = floor(rank); v[i] + (rank - i) * (v[i+1] - v[i]).
    """
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q={q} outside [0, 100]")
    v = sorted(values)
    rank = q / 100 * (len(v) - 1)
    i = int(math.floor(rank))
    if i >= len(v) - 1:
        return float(v[-1])
    return float(v[i] + (rank - i) * (v[i + 1] - v[i]))


def dist(values: list[float]) -> dict:
    """mean and p50/p90/p99 of a list (NaN when empty)."""
    d = {"n": len(values), "mean": (sum(values) / len(values)) if values else math.nan}
    for q in PERCENTILES:
        d[f"p{q}"] = percentile(values, q)
    return d


def _block(recs: list[RequestRecord], wall_s: float) -> dict:
    ok = [r for r in recs if r.ok]
    out_tok = sum(r.output_tokens for r in ok)
    return {
        "requests": len(recs), "completed": len(ok), "errors": len(recs) - len(ok),
        "output_tokens": out_tok, "prompt_tokens": sum(r.prompt_tokens for r in ok),
        "req_per_s": len(ok) / wall_s if wall_s > 0 else math.nan,
        "output_tok_per_s": out_tok / wall_s if wall_s > 0 else math.nan,
        "ttft_s": dist([r.ttft_s for r in ok if r.ttft_s is not None]),
        "tpot_s": dist([r.tpot_s for r in ok if r.tpot_s is not None]),
        "e2e_s": dist([r.e2e_s for r in ok]),
    }


def cold_and_hot(records: list[RequestRecord]) -> tuple[list[RequestRecord], list[RequestRecord]]:
    """Split by adapter warmth: a request is cold when it is the first of its adapter in the run (by send time:
    the one that may wait for the adapter to be loaded into the engine), hot otherwise. Issue 18 item 5 reports
    cold TTFT p99 apart, so a cold adapter starved behind hot ones shows."""
    seen, cold, hot = set(), [], []
    for r in sorted(records, key=lambda r: (r.send_s, r.index)):
        (hot if r.adapter in seen else cold).append(r)
        seen.add(r.adapter)
    return cold, hot


def summarize(records: list[RequestRecord], wall_s: float) -> dict:
    """Overall numbers (plus pooled ITL, and TTFT of cold and hot requests apart, `cold_and_hot`) and the same
    block per adapter (per-adapter throughput uses the run's wall)."""
    overall = _block(records, wall_s)
    overall["itl_s"] = dist([g for r in records if r.ok for g in r.itl_s])
    cold, hot = cold_and_hot(records)
    overall["ttft_cold_s"] = dist([r.ttft_s for r in cold if r.ok and r.ttft_s is not None])
    overall["ttft_hot_s"] = dist([r.ttft_s for r in hot if r.ok and r.ttft_s is not None])
    overall["wall_s"] = wall_s
    by_adapter: dict[str, list[RequestRecord]] = {}
    for r in records:
        by_adapter.setdefault(r.adapter, []).append(r)
    errors = sorted({r.error for r in records if r.error})[:5]
    return {"overall": overall, "per_adapter": {a: _block(rs, wall_s) for a, rs in sorted(by_adapter.items())},
            "error_samples": errors}


def headline(summary: dict) -> str:
    """One human line: throughput and p50/p99 latencies."""
    o = summary["overall"]
    ms = lambda d, k: f"{1000 * d[k]:.0f}" if not math.isnan(d[k]) else "nan"  # noqa: E731
    return (f"{o['completed']}/{o['requests']} ok  {o['req_per_s']:.2f} req/s  {o['output_tok_per_s']:.1f} out tok/s  "
            f"TTFT p50/p99 {ms(o['ttft_s'], 'p50')}/{ms(o['ttft_s'], 'p99')} ms  "
            f"TPOT p50/p99 {ms(o['tpot_s'], 'p50')}/{ms(o['tpot_s'], 'p99')} ms  "
            f"e2e p50/p99 {ms(o['e2e_s'], 'p50')}/{ms(o['e2e_s'], 'p99')} ms")
