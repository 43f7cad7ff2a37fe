"""`python -m bench.compare`: every system on this machine, the same seed and the same requests, then ratios.

    python -m bench.compare --out bench/results/cpu                      # all systems + scaling (~20-25 min, 2 cores)
    python -m bench.compare --out /tmp/b --systems vllm-lora,peft-single --no-scaling

Systems (adapters are named a0..a{n-1} everywhere, so the request lists are identical — see the fingerprint):
  hylorada       hylorada-serve with HyLoRADA adapters (c + position bias, exported by hylorada.commands.export)
  hylorada-lora  hylorada-serve with the same-shape plain LoRA adapters (served form via hylorada.commands.convert_peft)
  vllm-lora      upstream vLLM OpenAI server, the PEFT rsLoRA adapters via --lora-modules (our plugin excluded)
  vllm-base      upstream vLLM OpenAI server, no LoRA, every request on the base
  peft-single    transformers + PEFT, one request at a time (bench.peft_server --mode single)
  peft-mixed     transformers + PEFT mixed-adapter static batches of up to 16 (adapter_names=)
Interleaved (--interleave hylorada,vllm-lora,...): those systems' servers all up at once, the anchor run on each
in turn for --interleave-reps rounds (order reversed every other round); ratios of medians plus every round's ratio.
This is the measurement to quote across servers: back-to-back runs of one system differed by up to 25 % here.
Paired (--paired-reps, default 4): HyLoRADA vs plain-LoRA twins inside ONE hylorada-serve, alternating A B B A,
so slow drifts of a shared machine hit both sides (separate processes minutes apart differed by up to 22% here).
Scaling (hylorada-serve, and vllm-lora with --scaling-systems): output tok/s and p99 vs distinct adapters
(1 -> 256 with 8 slots) and vs Poisson request rate up to all-at-once.
Writes {out}/{label}.json + CDF PNGs per system, sweep JSON + PNGs, comparison.json; the last line is JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

from . import adapters as build
from .config import BenchConfig
from .metrics import headline
from .plots import plot_cdfs, plot_sweep
from .serve import run_bench
from .servers import hylorada_spec, link_adapter_dir, peft_spec, running, stop_servers_on_sigterm, vllm_spec

SYSTEMS = ("hylorada", "hylorada-lora", "vllm-lora", "vllm-base", "peft-single", "peft-mixed")
SLOTS = 8
# (numerator, denominator, the target or None)
RATIOS = [("hylorada", "hylorada-lora", 0.95), ("hylorada", "vllm-lora", 2.0), ("hylorada", "peft-single", 2.5),
          ("hylorada-lora", "vllm-lora", None), ("vllm-lora", "vllm-base", None), ("vllm-lora", "peft-single", None),
          ("peft-mixed", "peft-single", None), ("hylorada", "vllm-base", None)]


def anchor_config(url: str, names: list[str], label: str, out: Path, a) -> BenchConfig:
    """The issue's anchor: 96 requests x 48 prompt + 48 output tokens, concurrency 16, all at once, adapters mixed."""
    return BenchConfig(url=url, adapters=tuple(names), alpha=0.0, rate=math.inf, prompt_len=(48, 48),
                       output_len=(48, 48), num_requests=a.num_requests, max_concurrency=16, seed=a.seed, warmup=8,
                       label=label, out_dir=str(out), max_total_s=900, request_timeout_s=600)


def spec_for(system: str, base: Path, port: int, ad: dict, work: Path, n_slots: int, n_cpu: int,
             peft_threads: int = 2):
    if system == "hylorada":
        d = link_adapter_dir(work / "dirs" / system, ad["hylorada"])
        return hylorada_spec(system, base, port, d, list(ad["hylorada"]), n_slots, n_cpu)
    if system == "hylorada-lora":
        d = link_adapter_dir(work / "dirs" / system, ad["served"])
        return hylorada_spec(system, base, port, d, list(ad["served"]), n_slots, n_cpu)
    if system == "vllm-lora":
        return vllm_spec(system, base, port, ad["peft"], n_slots, n_cpu)
    if system == "vllm-base":
        return vllm_spec(system, base, port, {}, n_slots, n_cpu)
    if system in ("peft-single", "peft-mixed"):
        return peft_spec(system, base, port, ad["peft"], system.split("-")[1], threads=peft_threads)
    raise ValueError(f"unknown system {system!r} (one of {', '.join(SYSTEMS)})")


def probe(url: str, model: str, n: int = 12) -> list[int] | str:
    """Greedy token ids of one fixed request (proves which adapter math ran: HyLoRADA's c and p(pos) change them)."""
    import urllib.request
    body = {"model": model, "prompt": list(range(40, 88)), "max_tokens": n, "temperature": 0.0, "ignore_eos": True,
            "logprobs": 1}
    req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            choice = json.loads(r.read())["choices"][0]
        return (choice.get("logprobs") or {}).get("tokens") or choice["text"]
    except (OSError, ValueError, KeyError, IndexError) as e:
        return f"probe failed: {e}"


def run_system(system: str, base: Path, ad: dict, out: Path, work: Path, a) -> dict:
    names = ["base"] if system == "vllm-base" else list(ad["peft"])[:a.num_adapters]
    spec = spec_for(system, base, a.port, ad, work, SLOTS, SLOTS, a.peft_threads)
    print(f"== {system}: {spec.shell()}", flush=True)
    with running(spec, a.port, work / "logs" / f"{system}.log") as (url, startup):
        load = os.getloadavg()   # other work on the machine, recorded beside the numbers
        res = run_bench(anchor_config(url, names, system, out, a))
        sample = probe(url, names[0])
    print(f"[{system}] {headline(res)}  (ready in {startup:.0f} s)", flush=True)
    return {"system": system, "command": spec.shell(), "note": spec.note, "startup_s": startup, "loadavg": load,
            "probe": sample,
            "fingerprint": res["workload_fingerprint"], "overall": res["overall"], "records": res["requests"]}


def run_scaling(system: str, base: Path, ad: dict, out: Path, work: Path, a) -> dict:
    """One server holding every adapter; sweeps distinct adapters (uniform popularity) and Poisson request rate."""
    many = {"hylorada": ad["hylorada_many"], "vllm-lora": ad["peft_many"]}[system]
    spec = spec_for(system, base, a.port, {"hylorada": many, "peft": many}, work / "scaling", SLOTS, a.cpu_loras)
    names = list(many)
    small = dict(prompt_len=(32, 32), output_len=(32, 32), num_requests=a.sweep_requests, max_concurrency=16,
                 seed=a.seed, warmup=4, out_dir=str(out / "scaling"), max_total_s=600, request_timeout_s=300)
    sweeps = {"num_adapters": [], "rate": []}
    print(f"== scaling {system}: {spec.shell()[:300]} ...", flush=True)
    with running(spec, a.port, work / "logs" / f"scaling-{system}.log") as (url, startup):
        for n in a.adapter_counts:
            cfg = BenchConfig(url=url, adapters=tuple(names[:n]), alpha=0.0, rate=math.inf,
                              label=f"{system}_n{n}", **small)
            res = run_bench(cfg, plot=False)
            print(f"[{cfg.label}] {headline(res)}", flush=True)
            sweeps["num_adapters"].append({"x": n, "overall": res["overall"]})
        for r in a.rates:
            cfg = BenchConfig(url=url, adapters=tuple(names[:SLOTS]), alpha=1.0, rate=r, label=f"{system}_rate{r:g}",
                              **small)
            res = run_bench(cfg, plot=False)
            print(f"[{cfg.label}] {headline(res)}", flush=True)
            sweeps["rate"].append({"x": "inf" if math.isinf(r) else r, "overall": res["overall"]})
    return {"system": system, "command": spec.shell(), "startup_s": startup, **sweeps}


def run_paired(base: Path, ad: dict, out: Path, work: Path, a) -> dict:
    """HyLoRADA vs the same adapters as plain LoRA in ONE hylorada-serve process, alternating A B B A ...: machine
    noise that drifts over minutes hits both sides alike (names h0.. and l0..; same prompts, lengths and order)."""
    n = a.num_adapters
    both = {f"h{i}": p for i, p in enumerate(ad["hylorada"].values())} | \
           {f"l{i}": p for i, p in enumerate(ad["served"].values())}
    d = link_adapter_dir(work / "dirs" / "paired", both)
    spec = hylorada_spec("paired", base, a.port, d, list(both), SLOTS, 2 * n)
    runs = {"hylorada": [], "lora": []}
    print(f"== paired: {spec.shell()}", flush=True)
    with running(spec, a.port, work / "logs" / "paired.log") as (url, startup):
        for rep in range(a.paired_reps):
            for kind in (("hylorada", "lora") if rep % 2 == 0 else ("lora", "hylorada")):
                names = [f"{kind[0]}{i}" for i in range(n)]
                res = run_bench(anchor_config(url, names, f"paired_{kind}_{rep}", out / "paired", a), plot=False)
                print(f"[paired {kind} {rep}] {headline(res)}", flush=True)
                runs[kind].append(res["overall"])
    med = {k: statistics.median(o["output_tok_per_s"] for o in v) for k, v in runs.items()}
    return {"command": spec.shell(), "startup_s": startup, "reps": a.paired_reps,
            "tok_per_s": {k: [o["output_tok_per_s"] for o in v] for k, v in runs.items()},
            "ttft_p50_s": {k: [o["ttft_s"]["p50"] for o in v] for k, v in runs.items()},
            "median_tok_per_s": med, "ratio_of_medians": med["hylorada"] / med["lora"],
            "per_rep_ratio": [h["output_tok_per_s"] / lo["output_tok_per_s"]
                              for h, lo in zip(runs["hylorada"], runs["lora"])]}


def run_interleaved(systems: list[str], base: Path, ad: dict, out: Path, work: Path, a) -> dict:
    """Every system's server up at once (ports port+1, port+2, ...), the anchor run on each in turn, the order
    reversed every other round (A B, B A, ...): a drift of a shared machine over minutes hits every system alike,
    which separate back-to-back runs cannot promise (the same system differed by up to 25 % minutes apart here).
    Idle servers cost next to nothing meanwhile (their engine loops park); a 2 s pause separates the runs."""
    runs: dict[str, list] = {s: [] for s in systems}
    records: dict[str, list] = {s: [] for s in systems}
    specs, loads = {}, []
    with contextlib.ExitStack() as stack:
        urls = {}
        for i, s in enumerate(systems):
            port = a.port + 1 + i
            specs[s] = spec_for(s, base, port, ad, work, SLOTS, SLOTS, a.peft_threads)
            print(f"== interleaved {s}: {specs[s].shell()}", flush=True)
            urls[s], _ = stack.enter_context(running(specs[s], port, work / "logs" / f"interleaved-{s}.log"))
        for rep in range(a.interleave_reps):
            for s in (systems if rep % 2 == 0 else systems[::-1]):
                time.sleep(2.0)
                names = ["base"] if s == "vllm-base" else list(ad["peft"])[:a.num_adapters]
                loads.append(os.getloadavg()[0])
                res = run_bench(anchor_config(urls[s], names, f"interleaved_{s}_{rep}", out / "interleaved", a),
                                plot=False)
                print(f"[interleaved {s} {rep}] {headline(res)}", flush=True)
                runs[s].append(res["overall"])
                records[s] += res["requests"]
    plot_cdfs(records, out / "interleaved_cdf.png", title=f"interleaved, {a.interleave_reps} rounds pooled: "
              f"{a.num_requests} requests x 48+48 tokens, concurrency 16, {a.num_adapters} adapters")
    return {"commands": {s: sp.shell() for s, sp in specs.items()}, "reps": a.interleave_reps, "loadavg_1m": loads,
            "tok_per_s": {s: [o["output_tok_per_s"] for o in v] for s, v in runs.items()},
            "ttft_p50_s": {s: [o["ttft_s"]["p50"] for o in v] for s, v in runs.items()}, **interleaved_ratios(runs)}


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/cpu")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--num-adapters", type=int, default=8)
    p.add_argument("--num-requests", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--paired-reps", type=int, default=4, help="A/B reps of HyLoRADA vs plain LoRA in one server (0: off)")
    p.add_argument("--interleave", default="", help="systems to run interleaved, all servers up at once "
                   "(e.g. hylorada,vllm-lora); their medians give the headline ratios")
    p.add_argument("--interleave-reps", type=int, default=4, help="rounds of the interleaved run (order reversed "
                   "every other round)")
    p.add_argument("--scaling-systems", default="hylorada")
    p.add_argument("--adapter-counts", default="1,8,32,128,256")
    p.add_argument("--rates", default="1,2,4,8,inf")
    p.add_argument("--sweep-requests", type=int, default=64)
    p.add_argument("--cpu-loras", type=int, default=64, help="CPU adapter cache in the scaling server")
    p.add_argument("--peft-threads", type=int, default=2, help="torch threads of the PEFT server (2 = this machine's "
                   "cores; under load from other processes 1 is far faster: OpenMP spin-waits collapse)")
    a = p.parse_args(argv)
    stop_servers_on_sigterm()
    a.adapter_counts = [int(x) for x in a.adapter_counts.split(",")]
    a.rates = [float(x) for x in a.rates.split(",")]
    out, work = Path(a.out), build.CACHE / "compare"
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    systems = [s for s in a.systems.split(",") if s]
    inter = [s for s in a.interleave.split(",") if s]
    unknown = [s for s in systems + inter if s not in SYSTEMS]
    if unknown:
        p.error(f"unknown system(s) {', '.join(unknown)} (known: {', '.join(SYSTEMS)})")
    scaling = [] if a.no_scaling else [s for s in a.scaling_systems.split(",") if s]
    n_many = max(a.adapter_counts) if scaling else a.num_adapters
    base = build.build_base()
    peft_paths = build.build_peft(base, max(n_many, a.num_adapters))
    name = lambda i: f"a{i}"  # noqa: E731  (one name per adapter index in every system)
    ad = {"peft": {name(i): p for i, p in enumerate(peft_paths[:a.num_adapters])},
          "peft_many": {name(i): p for i, p in enumerate(peft_paths[:n_many])}}
    if {"hylorada-lora"} & set(systems + inter) or a.paired_reps:
        ad["served"] = {name(i): p for i, p in enumerate(build.build_served_lora(base, peft_paths[:a.num_adapters]))}
    if {"hylorada"} & set(systems + scaling + inter) or a.paired_reps:
        hyl = build.build_hylorada(base, n_many if "hylorada" in scaling else a.num_adapters)
        ad["hylorada"] = {name(i): p for i, p in enumerate(hyl[:a.num_adapters])}
        ad["hylorada_many"] = {name(i): p for i, p in enumerate(hyl[:n_many])}
    results, failures = {}, {}
    for s in systems:
        try:
            results[s] = run_system(s, base, ad, out, work, a)
        except Exception as e:   # one system failing must not lose the others' numbers
            failures[s] = f"{type(e).__name__}: {e}"
            print(f"!! {s} failed: {failures[s]}", flush=True)
    interleaved = None
    if a.interleave:
        try:
            interleaved = run_interleaved(inter, base, ad, out, work, a)
            for row in interleaved["ratios"]:
                print(f"interleaved {row['ratio']:<26} {row['output_tok_per_s']:.2f}x tok/s (per round "
                      f"{', '.join(f'{r:.2f}' for r in row['per_rep'])})  TTFT p50 {row['ttft_p50']:.2f}x"
                      + (f"  target {row['target']}x {'met' if row['met'] else 'MISSED'}" if row["target"] else ""),
                      flush=True)
        except Exception as e:
            failures["interleaved"] = f"{type(e).__name__}: {e}"
            print(f"!! interleaved failed: {failures['interleaved']}", flush=True)
    paired = None
    if a.paired_reps:
        try:
            paired = run_paired(base, ad, out, work, a)
            print(f"paired hylorada / lora: {paired['ratio_of_medians']:.3f} (per rep "
                  f"{', '.join(f'{r:.3f}' for r in paired['per_rep_ratio'])})", flush=True)
        except Exception as e:
            failures["paired"] = f"{type(e).__name__}: {e}"
            print(f"!! paired failed: {failures['paired']}", flush=True)
    sweeps = {}
    for s in scaling:
        try:
            sweeps[s] = run_scaling(s, base, ad, out, work, a)
        except Exception as e:
            failures[f"scaling-{s}"] = f"{type(e).__name__}: {e}"
            print(f"!! scaling {s} failed: {failures[f'scaling-{s}']}", flush=True)
    if results:
        plot_cdfs({s: r["records"] for s, r in results.items()}, out / "compare_cdf.png",
                  title=f"{a.num_requests} requests x 48+48 tokens, concurrency 16, {a.num_adapters} adapters")
    for knob, xlabel in (("num_adapters", "distinct adapters (8 slots)"), ("rate", "request rate (req/s; inf = 2x max)")):
        if sweeps:
            xs = [pt["x"] for pt in next(iter(sweeps.values()))[knob]]
            finite = [x for x in xs if x != "inf"] or [1]
            xs = [2 * max(finite) if x == "inf" else x for x in xs]
            plot_sweep(xs, {s: [pt["overall"] for pt in sw[knob]] for s, sw in sweeps.items()},
                       out / f"scaling_{knob}.png", xlabel=xlabel, log_x=knob == "num_adapters")
    summary = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
               "started_unix": t_start, "elapsed_s": time.time() - t_start,
               "systems": {s: {k: v for k, v in r.items() if k != "records"} for s, r in results.items()},
               "ratios": ratio_table(results), "interleaved": interleaved, "paired": paired, "scaling": sweeps, "failures": failures}
    (out / "comparison.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    for row in summary["ratios"]:
        print(f"{row['ratio']:<28} {row['output_tok_per_s']:.2f}x tok/s  TTFT p50 {row['ttft_p50']:.2f}x"
              + (f"  target {row['target']}x {'met' if row['met'] else 'MISSED'}" if row["target"] else ""))
    print(json.dumps({"out": str(out), "elapsed_s": round(summary["elapsed_s"]), "failures": failures,
                      "tok_per_s": {s: round(r["overall"]["output_tok_per_s"], 1) for s, r in results.items()},
                      "ratios": {r["ratio"]: round(r["output_tok_per_s"], 3) for r in summary["ratios"]},
                      "interleaved": interleaved and {r["ratio"]: round(r["output_tok_per_s"], 3)
                                                      for r in interleaved["ratios"]},
                      "paired_hylorada_over_lora": paired and round(paired["ratio_of_medians"], 3)}))
    return 0 if not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
