"""`python -m bench.load`: S-LoRA-style load against any OpenAI-compatible /v1/completions on this machine.

    python -m bench.load --url http://127.0.0.1:8000 --adapter-prefix lora- --num-adapters 8 \
        --alpha 1 --rate inf --max-concurrency 16 --num-requests 96 --prompt-len 48 --output-len 48 \
        --label vllm-lora --out-dir bench/results/mine

Sweeps (one point per value, same seed, plotted as throughput and p99 latency against x):
    --sweep rate=0.5,1,2,4,inf       --sweep num_adapters=1,8,64,256   (the first N adapter names)

Prints progress on stderr, one summary line per point, and as its LAST line a JSON object.
Only loopback targets (127.0.0.0/8, localhost, ::1) are accepted.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

from . import workload
from .client import run_requests
from .config import BenchConfig, BenchConfigError
from .metrics import headline, summarize


def run_bench(cfg: BenchConfig, write: bool = True, plot: bool = True) -> dict:
    """One run: generate the seeded requests, send them, summarize; writes {label}.json (and {label}_cdf.png)."""
    reqs = workload.generate(**cfg.workload_args())
    if cfg.duration_s is not None:
        reqs = [r for r in reqs if r.arrival_s <= cfg.duration_s]
    bar = None
    if cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=len(reqs), desc=cfg.label, unit="req", file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
    fails = [0]

    def on_done(rec):
        fails[0] += rec.error is not None
        if bar is not None:
            bar.update(1)
            bar.set_postfix(errors=fails[0], refresh=False)

    started = time.time()
    try:
        records, wall, warm_errors = asyncio.run(run_requests(cfg, reqs, on_done))
    finally:
        if bar is not None:
            bar.close()
    summary = summarize(records, wall)
    result = {"label": cfg.label, "started_unix": started, "config": cfg.to_json(),
              "workload_fingerprint": workload.fingerprint(reqs), "num_requests_sent": len(reqs),
              "warmup_errors": warm_errors, **summary, "requests": [r.to_json() for r in records]}
    if write and cfg.out_dir:
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{cfg.label}.json").write_text(json.dumps(result, default=_json_default) + "\n")
        result["files"] = [str(out / f"{cfg.label}.json")]
        if plot:
            from .plots import plot_cdfs
            plot_cdfs({cfg.label: result["requests"]}, out / f"{cfg.label}_cdf.png", title=cfg.label)
            result["files"].append(str(out / f"{cfg.label}_cdf.png"))
    return result


def run_sweep(cfg: BenchConfig, knob: str, values: list[float]) -> dict:
    """One run per value of `rate` or `num_adapters` (same seed), plus a sweep plot and JSON."""
    points = []
    for v in values:
        if knob == "rate":
            point = dataclasses.replace(cfg, rate=v, label=f"{cfg.label}_rate{v:g}")
        elif knob == "num_adapters":
            n = int(v)
            if n > len(cfg.adapters):
                raise BenchConfigError(f"sweep num_adapters={n} but only {len(cfg.adapters)} adapter names were given")
            point = dataclasses.replace(cfg, adapters=cfg.adapters[:n], label=f"{cfg.label}_n{n}")
        else:
            raise BenchConfigError(f"unknown sweep knob {knob!r} (rate | num_adapters)")
        res = run_bench(point)
        print(f"[{point.label}] {headline(res)}", flush=True)
        points.append({"x": v, "label": point.label, "overall": res["overall"], "files": res.get("files", [])})
    out = {"label": cfg.label, "sweep": knob, "config": cfg.to_json(),
           "points": [p | {"x": "inf" if math.isinf(p["x"]) else p["x"]} for p in points]}
    if cfg.out_dir:
        d = Path(cfg.out_dir)
        (d / f"{cfg.label}_sweep_{knob}.json").write_text(json.dumps(out, indent=1, default=_json_default) + "\n")
        from .plots import plot_sweep
        xs = [p["x"] if not math.isinf(p["x"]) else 2 * max([q["x"] for q in points if not math.isinf(q["x"])] or [1])
              for p in points]
        plot_sweep(xs, {cfg.label: [p["overall"] for p in points]}, d / f"{cfg.label}_sweep_{knob}.png",
                   xlabel="request rate (req/s; rightmost = all at once)" if knob == "rate" else "distinct adapters",
                   log_x=knob == "num_adapters")
    return out


def _json_default(o):
    if isinstance(o, float) and math.isinf(o):
        return "inf"
    return str(o)


def _range(s: str) -> tuple[int, int]:
    lo, _, hi = s.partition(",")
    return int(lo), int(hi or lo)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server root (loopback only)")
    p.add_argument("--adapters", default=None, help="comma-separated model names, most popular first")
    p.add_argument("--adapter-prefix", default=None, help="names PREFIX0..PREFIX{N-1} (with --num-adapters)")
    p.add_argument("--num-adapters", type=int, default=None)
    p.add_argument("--alpha", type=float, default=1.0, help="Zipf popularity exponent (0 = uniform)")
    p.add_argument("--rate", type=float, default=math.inf, help="mean requests/s (inf = all at t=0)")
    p.add_argument("--cv", type=float, default=1.0, help="arrival burstiness (1 = Poisson)")
    p.add_argument("--prompt-len", type=_range, default=(48, 48), help="LO[,HI] tokens")
    p.add_argument("--output-len", type=_range, default=(48, 48), help="LO[,HI] tokens")
    p.add_argument("--num-requests", type=int, default=96)
    p.add_argument("--duration", type=float, default=None, help="seconds of arrivals (finite rate)")
    p.add_argument("--max-concurrency", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--max-total", type=float, default=900.0, help="hard limit for the whole run, seconds")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--label", default="run")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--sweep", default=None, help="KNOB=V1,V2,...  with KNOB rate or num_adapters")
    return p


def config_from_args(a) -> BenchConfig:
    if a.adapters:
        names = tuple(x for x in a.adapters.split(",") if x)
    elif a.adapter_prefix is not None and a.num_adapters:
        names = tuple(f"{a.adapter_prefix}{i}" for i in range(a.num_adapters))
    else:
        names = ()
    return BenchConfig(url=a.url, adapters=names, alpha=a.alpha, rate=a.rate, cv=a.cv, prompt_len=a.prompt_len,
                       output_len=a.output_len, num_requests=a.num_requests, duration_s=a.duration,
                       max_concurrency=a.max_concurrency, seed=a.seed, temperature=a.temperature,
                       request_timeout_s=a.request_timeout, max_total_s=a.max_total, warmup=a.warmup,
                       label=a.label, out_dir=a.out_dir, progress=not a.no_progress)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(a)
        if a.sweep:
            knob, _, vals = a.sweep.partition("=")
            out = run_sweep(cfg, knob, [float(v) for v in vals.split(",") if v])
            print(json.dumps({"label": cfg.label, "sweep": knob, "points": [
                {"x": p["x"], "output_tok_per_s": p["overall"]["output_tok_per_s"],
                 "e2e_p99_s": p["overall"]["e2e_s"]["p99"], "errors": p["overall"]["errors"]} for p in out["points"]]},
                default=_json_default))
            return 0
        res = run_bench(cfg)
    except BenchConfigError as e:
        print(f"bench.load: {e}", file=sys.stderr)
        print(json.dumps({"error": str(e)}))
        return 2
    print(f"[{cfg.label}] {headline(res)}", flush=True)
    last = {"label": cfg.label, "workload_fingerprint": res["workload_fingerprint"], **res["overall"],
            "files": res.get("files", [])}
    print(json.dumps(last, default=_json_default))
    return 0 if res["overall"]["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
