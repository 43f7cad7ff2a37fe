"""The runs of bench.compare, each around its servers (bench.compare.servers.running): one system on the anchor
workload, the scaling sweeps, the paired A/B inside one hylorada-serve, and the interleaved rounds."""
from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import time
from pathlib import Path

from bench.load.config import BenchConfig
from bench.load.metrics import headline
from bench.load.plots import plot_cdfs
from bench.load.serve import run_bench
from bench.proc import session_rss_mb

from .ratios import interleaved_ratios
from .servers import hylorada_spec, link_adapter_dir, running, spec_for

SLOTS = 8


def anchor_config(url: str, names: list[str], label: str, out: Path, a) -> BenchConfig:
    """The issue's anchor: 96 requests x 48 prompt + 48 output tokens, concurrency 16, all at once, adapters mixed."""
    return BenchConfig(url=url, adapters=tuple(names), alpha=0.0, rate=math.inf, prompt_len=(48, 48),
                       output_len=(48, 48), num_requests=a.num_requests, max_concurrency=16, seed=a.seed, warmup=8,
                       label=label, out_dir=str(out), max_total_s=900, request_timeout_s=600)


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
    spec = spec_for(system, base, a.port, ad, work, SLOTS, SLOTS, a.peft_threads, a.dtype)
    print(f"== {system}: {spec.shell()}", flush=True)
    with running(spec, a.port, work / "logs" / f"{system}.log") as (url, startup, _):
        load = os.getloadavg()   # other work on the machine, recorded beside the numbers
        res = run_bench(anchor_config(url, names, system, out, a))
        sample = probe(url, names[0])
    print(f"[{system}] {headline(res)}  (ready in {startup:.0f} s)", flush=True)
    return {"system": system, "command": spec.shell(), "note": spec.note, "startup_s": startup, "loadavg": load,
            "probe": sample,
            "fingerprint": res["workload_fingerprint"], "overall": res["overall"], "records": res["requests"]}


def run_scaling(system: str, base: Path, ad: dict, out: Path, work: Path, a) -> dict:
    """One server holding every adapter (`a.scaling_slots` LoRA slots, `a.cpu_loras` cached); sweeps distinct
    adapters under uniform popularity ("num_adapters") and, with `a.zipf`, under Zipf α = 1 over the same names
    ("num_adapters_zipf"), then Poisson request rate over SLOTS adapters ("rate"; skipped when `a.rates` is empty).
    Every point's overall block carries TTFT of cold and hot requests apart (bench.load.metrics.cold_and_hot); every
    point also the server's resident memory after it (`rss_mb`: API server + engine processes), the run the RSS at
    ready and the bytes on disk per adapter."""
    many = ad["hylorada_many"] if system == "hylorada" else ad["peft_many"]      # vllm-lora and its shimmed twins: PEFT
    spec = spec_for(system, base, a.port, {"hylorada": many, "peft": many}, work / "scaling", a.scaling_slots,
                    a.cpu_loras, dtype=a.dtype)
    names = list(many)
    small = dict(prompt_len=(32, 32), output_len=(32, 32), num_requests=a.sweep_requests, max_concurrency=16,
                 seed=a.seed, warmup=4, out_dir=str(out / "scaling"), max_total_s=600, request_timeout_s=300)
    sweeps = {"num_adapters": [], "rate": []} | ({"num_adapters_zipf": []} if a.zipf else {})
    print(f"== scaling {system}: {spec.shell()[:300]} ...", flush=True)
    ready_s = 420.0 + 0.5 * len(names)    # listed = every folder validated: SmolLM2 took 182 s for 1,024 names
    with running(spec, a.port, work / "logs" / f"scaling-{system}.log", ready_timeout_s=ready_s) as (url, startup, sid):
        rss0 = session_rss_mb(sid)[0]
        for knob, alpha, tag in (("num_adapters", 0.0, "n"), ("num_adapters_zipf", 1.0, "zipf_n")):
            if knob not in sweeps:
                continue
            for n in a.adapter_counts:
                cfg = BenchConfig(url=url, adapters=tuple(names[:n]), alpha=alpha, rate=math.inf,
                                  label=f"{system}_{tag}{n}", **small)
                res = run_bench(cfg, plot=False)
                o = res["overall"]
                print(f"[{cfg.label}] {headline(res)}  cold TTFT p99 {1000 * o['ttft_cold_s']['p99']:.0f} ms "
                      f"({o['ttft_cold_s']['n']} cold)", flush=True)
                sweeps[knob].append({"x": n, "overall": o, "rss_mb": round(session_rss_mb(sid)[0], 1)})
        for r in a.rates:
            cfg = BenchConfig(url=url, adapters=tuple(names[:SLOTS]), alpha=1.0, rate=r, label=f"{system}_rate{r:g}",
                              **small)
            res = run_bench(cfg, plot=False)
            print(f"[{cfg.label}] {headline(res)}", flush=True)
            sweeps["rate"].append({"x": "inf" if math.isinf(r) else r, "overall": res["overall"],
                                   "rss_mb": round(session_rss_mb(sid)[0], 1)})
    return {"system": system, "command": spec.shell(), "startup_s": startup, "slots": a.scaling_slots,
            "cpu_loras": a.cpu_loras, "bytes_per_adapter": adapter_bytes(many.values()),
            "rss_at_ready_mb": round(rss0, 1), **sweeps}


def adapter_bytes(folders) -> int:
    """Median bytes on disk of the distinct adapter folders behind the names (files directly inside each)."""
    distinct = {Path(f).resolve() for f in folders}
    return int(statistics.median(sum(p.stat().st_size for p in d.iterdir() if p.is_file()) for d in distinct))


def run_paired(base: Path, ad: dict, out: Path, work: Path, a) -> dict:
    """HyLoRADA vs the same adapters as plain LoRA in ONE hylorada-serve process, alternating A B B A ...: machine
    noise that drifts over minutes hits both sides alike (names h0.. and l0..; same prompts, lengths and order)."""
    n = a.num_adapters
    both = {f"h{i}": p for i, p in enumerate(ad["hylorada"].values())} | \
           {f"l{i}": p for i, p in enumerate(ad["served"].values())}
    d = link_adapter_dir(work / "dirs" / "paired", both)
    spec = hylorada_spec("paired", base, a.port, d, list(both), SLOTS, 2 * n, dtype=a.dtype)
    runs = {"hylorada": [], "lora": []}
    print(f"== paired: {spec.shell()}", flush=True)
    with running(spec, a.port, work / "logs" / "paired.log") as (url, startup, _):
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
            specs[s] = spec_for(s, base, port, ad, work, SLOTS, SLOTS, a.peft_threads, a.dtype)
            print(f"== interleaved {s}: {specs[s].shell()}", flush=True)
            urls[s], _, _ = stack.enter_context(running(specs[s], port, work / "logs" / f"interleaved-{s}.log"))
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
