"""`python -m bench.compare`: every system on this machine, the same seed and the same requests, then ratios.

    python -m bench.compare --out bench/results/cpu                      # all systems + scaling (~20-25 min, 2 cores)
    python -m bench.compare --out /tmp/b --systems vllm-lora,peft-single --no-scaling
    python -m bench.compare --base smollm2-135m-instruct --dtype bfloat16 --out bench/results/smollm2-bf16 \
        --systems '' --no-scaling --paired-reps 4 --interleave hylorada,hylorada-lora,vllm-lora,vllm-base

Base (--base): tiny-small (default, hylorada.tiny's 26M "small"), a base hylorada.bases knows (the real
SmolLM2-135M-Instruct: fetched once), or a model folder. --dtype goes to every system alike (vLLM's "auto" would
run a float32 checkpoint in bfloat16 on this CPU, so it is never left to choose).

Systems (adapters are named a0..a{n-1} everywhere, so the request lists are identical — see the fingerprint):
  hylorada       hylorada-serve with HyLoRADA adapters (c + position bias, exported by hylorada.commands.export)
  hylorada-lora  hylorada-serve with the same-shape plain LoRA adapters (served form via hylorada.commands.convert_peft)
  vllm-lora      upstream vLLM OpenAI server, the PEFT rsLoRA adapters via --lora-modules (our plugin excluded)
  vllm-lora-nodelay  the same with TCP_NODELAY on every connection, hylorada-serve's transport fix and nothing else
                 (bench/compare/nodelay/sitecustomize.py; not in the default --systems): what the fix is worth
  vllm-lora-hostfix  the same plus the shm-ring busy wait that naps instead of yielding (patches/spin_nap.py's fix,
                 same shim; not in the default --systems): upstream with every host fix hylorada-serve has
  vllm-base      upstream vLLM OpenAI server, no LoRA, every request on the base
  peft-single    transformers + PEFT, one request at a time (bench.compare.peft_server --mode single)
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
import json
import os
import platform
import time
from pathlib import Path

from bench.load.plots import plot_cdfs, plot_sweep

from . import adapters as build
from .ratios import ratio_table
from .runs import run_interleaved, run_paired, run_scaling, run_system
from .servers import SHIMMED, SYSTEMS, stop_servers_on_sigterm


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/cpu")
    p.add_argument("--base", default=build.TINY, help=f"{build.TINY} (default), a known base name "
                   "(smollm2-135m-instruct) or a model folder; adapters are built on it (r16, all seven projections)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="every system's dtype (vLLM --dtype, the PEFT server's torch dtype)")
    p.add_argument("--systems", default=",".join(s for s in SYSTEMS if s not in SHIMMED))
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
    p.add_argument("--scaling-slots", type=int, default=8, help="LoRA slots (--max-loras) of every scaling server: "
                   "the most distinct adapters one batch can hold")
    p.add_argument("--zipf", action="store_true", help="also sweep distinct adapters under Zipf alpha = 1 popularity")
    p.add_argument("--weight-sets", type=int, default=0, help="build only this many distinct adapters and serve the "
                   "--adapter-counts names over them in turn (0: one per name); each name is still its own adapter "
                   "to the server (own id, load and cache entry), which is what the scaling measures")
    p.add_argument("--peft-threads", type=int, default=2, help="torch threads of the PEFT server (2 = this machine's "
                   "cores; under load from other processes 1 is far faster: OpenMP spin-waits collapse)")
    a = p.parse_args(argv)
    stop_servers_on_sigterm()
    a.adapter_counts = [int(x) for x in a.adapter_counts.split(",")]
    a.rates = [float(x) for x in a.rates.split(",") if x]
    base, cache = build.resolve_base(a.base)
    out, work = Path(a.out), cache / "compare"
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    systems = [s for s in a.systems.split(",") if s]
    inter = [s for s in a.interleave.split(",") if s]
    unknown = [s for s in systems + inter if s not in SYSTEMS]
    if unknown:
        p.error(f"unknown system(s) {', '.join(unknown)} (known: {', '.join(SYSTEMS)})")
    scaling = [] if a.no_scaling else [s for s in a.scaling_systems.split(",") if s]
    n_many = max(a.adapter_counts) if scaling else a.num_adapters
    n_built = max(n_many, a.num_adapters) if a.weight_sets <= 0 else max(a.weight_sets, a.num_adapters)
    cycle = lambda paths: [paths[i % len(paths)] for i in range(max(n_many, a.num_adapters))]  # noqa: E731
    peft_paths = cycle(build.build_peft(base, n_built, cache))
    name = lambda i: f"a{i}"  # noqa: E731  (one name per adapter index in every system)
    ad = {"peft": {name(i): p for i, p in enumerate(peft_paths[:a.num_adapters])},
          "peft_many": {name(i): p for i, p in enumerate(peft_paths[:n_many])}}
    if {"hylorada-lora"} & set(systems + inter) or a.paired_reps:
        ad["served"] = {name(i): p for i, p in enumerate(build.build_served_lora(base, peft_paths[:a.num_adapters], cache))}
    if {"hylorada"} & set(systems + scaling + inter) or a.paired_reps:
        hyl = cycle(build.build_hylorada(base, min(n_built, n_many) if "hylorada" in scaling else a.num_adapters,
                                         cache))
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
    for knob, xlabel in (("num_adapters", f"distinct adapters, uniform ({a.scaling_slots} slots)"),
                         ("num_adapters_zipf", f"distinct adapters, Zipf 1 ({a.scaling_slots} slots)"),
                         ("rate", "request rate (req/s; inf = 2x max)")):
        if sweeps and all(sw.get(knob) for sw in sweeps.values()):
            xs = [pt["x"] for pt in next(iter(sweeps.values()))[knob]]
            finite = [x for x in xs if x != "inf"] or [1]
            xs = [2 * max(finite) if x == "inf" else x for x in xs]
            plot_sweep(xs, {s: [pt["overall"] for pt in sw[knob]] for s, sw in sweeps.items()},
                       out / f"scaling_{knob}.png", xlabel=xlabel, log_x=knob.startswith("num_adapters"),
                       cold=knob.startswith("num_adapters"))
    summary = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "base": str(base),
               "base_arg": a.base, "dtype": a.dtype,
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
