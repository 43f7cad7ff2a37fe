"""The ratios bench.compare reports, as pure functions of its results (no servers): one table per run, and the
interleaved run's ratios of medians with every round's own ratio."""
from __future__ import annotations

import statistics

# (numerator, denominator, the target or None)
RATIOS = [("hylorada", "hylorada-lora", 0.95), ("hylorada", "vllm-lora", 2.0), ("hylorada", "peft-single", 2.5),
          ("hylorada-lora", "vllm-lora", None), ("vllm-lora", "vllm-base", None), ("vllm-lora", "peft-single", None),
          ("peft-mixed", "peft-single", None), ("hylorada", "vllm-base", None)]


def interleaved_ratios(runs: dict[str, list[dict]]) -> dict:
    """runs: system -> its rounds' `overall` blocks, in round order. Ratios of the medians over rounds (output
    tok/s; p50 TTFT), each round's own ratio (same round = same minutes of the machine) and the target check."""
    med = {s: statistics.median(o["output_tok_per_s"] for o in v) for s, v in runs.items()}
    ttft = {s: statistics.median(o["ttft_s"]["p50"] for o in v) for s, v in runs.items()}
    ratios = []
    for num, den, target in RATIOS:
        if num in runs and den in runs:
            per_rep = [x["output_tok_per_s"] / y["output_tok_per_s"] for x, y in zip(runs[num], runs[den])]
            r = med[num] / med[den]
            ratios.append({"ratio": f"{num} / {den}", "output_tok_per_s": r, "per_rep": per_rep,
                           "min_per_rep": min(per_rep), "ttft_p50": ttft[num] / ttft[den], "target": target,
                           "met": None if target is None else r >= target})
    return {"median_tok_per_s": med, "median_ttft_p50_s": ttft, "ratios": ratios}


def ratio_table(results: dict) -> list[dict]:
    rows = []
    for num, den, target in RATIOS:
        if num in results and den in results:
            n, d = results[num]["overall"], results[den]["overall"]
            rows.append({"ratio": f"{num} / {den}", "output_tok_per_s": n["output_tok_per_s"] / d["output_tok_per_s"],
                         "ttft_p50": n["ttft_s"]["p50"] / d["ttft_s"]["p50"], "target": target,
                         "met": None if target is None else n["output_tok_per_s"] / d["output_tok_per_s"] >= target})
    return rows
