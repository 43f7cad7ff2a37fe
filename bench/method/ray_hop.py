"""What the Ray hop costs: the anchor workload through `hylorada-serve --replicas 1`'s endpoint (Serve's proxy ->
ingress -> replica -> its hylorada-serve) against the same replica's own hylorada-serve port, in alternating
rounds on one running cluster (the same engine answers both: only the hop differs). Issue 19's bench; 1 vs 2
replicas' throughput means nothing on this 2-core machine, so the per-replica figure is what is reported.

    python -m bench.method.ray_hop [--rounds 3] [--num-requests 96] [--num-adapters 8] [--dtype float32]

Base and adapters: bench.compare's (the 26M tiny "small" base, served-form LoRA r16), the anchor workload
(96 requests x 48 prompt + 48 output tokens, concurrency 16, adapters mixed). Writes bench/results/ray_hop.json
(every round's summary) and prints, as its last line, a JSON object: p50 TTFT / e2e added by the hop and the
throughput ratio (ray / direct), medians over rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.proc import free_port, launch, stop, wait_ready

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench/results/ray_hop.json"


def main(argv=None) -> int:
    from bench.compare.adapters import build_base, build_peft, build_served_lora
    from bench.compare.runs import anchor_config
    from bench.load.metrics import headline
    from bench.load.serve import run_bench
    p = argparse.ArgumentParser(prog="python -m bench.method.ray_hop", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--num-requests", type=int, default=96)
    p.add_argument("--num-adapters", type=int, default=8)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    base = build_base()
    served = build_served_lora(base, build_peft(base, a.num_adapters))
    work = Path(tempfile.mkdtemp(prefix="ray-hop-"))
    adapters = work / "adapters"
    adapters.mkdir()
    names = []
    for s in served:
        shutil.copytree(s, adapters / s.name, ignore=shutil.ignore_patterns("bench_stamp.json"))
        names.append(s.name)
    port = free_port()
    cmd = [sys.executable, "-m", "hylorada_serve.cli", "--replicas", "1", "--base", str(base), "--adapters",
           str(adapters), "--port", str(port), "--dtype", a.dtype, "--max-loras", "8", "--max-model-len", "512",
           "--max-num-seqs", "16", "--kv-cache-memory-bytes", str(1 << 30)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYLORADA_")}
    env.update(VLLM_HOST_IP="127.0.0.1", PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0",
               HYLORADA_REPLICA_LOG_DIR=str(work / "logs"))
    proc = launch(cmd, work / "cluster.log", env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    found = {}

    def ready():
        try:
            rows = httpx.get(url + "/v1/replicas", timeout=10).json()["replicas"]
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        ok = len(rows) == 1 and len(rows[0]["models"].get("data", [])) == len(names) + 1
        if ok:
            found.update(rows[0])
        return ok
    why = wait_ready(proc, ready, 600, poll_s=2.0)
    rounds = []
    try:
        if why is not None:
            raise SystemExit(f"the cluster {why}; see {work / 'cluster.log'}")
        startup = time.monotonic() - t0
        direct = f"http://127.0.0.1:{found['port']}"
        print(f"cluster ready in {startup:.0f} s; replica {found['replica']} at {direct}", flush=True)
        for r in range(a.rounds):
            order = [("direct", direct), ("ray", url)] if r % 2 == 0 else [("ray", url), ("direct", direct)]
            for label, target in order:
                cfg = anchor_config(target, names, f"{label}_{r}", work / "runs", argparse.Namespace(
                    num_requests=a.num_requests, seed=a.seed))
                res = run_bench(cfg, write=False, plot=False)
                o = res["overall"]
                rounds.append({"round": r, "system": label, "tok_s": o["output_tok_per_s"],
                               "ttft_p50_ms": 1000 * o["ttft_s"]["p50"], "ttft_p99_ms": 1000 * o["ttft_s"]["p99"],
                               "e2e_p50_ms": 1000 * o["e2e_s"]["p50"], "completed": o["completed"],
                               "requests": o["requests"]})
                print(f"[round {r} {label}] {headline(res)}", flush=True)
    finally:
        stop(proc, timeout_s=120)
        shutil.rmtree(work, ignore_errors=True)

    def med(system, key):
        return statistics.median(x[key] for x in rounds if x["system"] == system)
    summary = {"ttft_p50_added_ms": med("ray", "ttft_p50_ms") - med("direct", "ttft_p50_ms"),
               "e2e_p50_added_ms": med("ray", "e2e_p50_ms") - med("direct", "e2e_p50_ms"),
               "tok_s_ratio_ray_over_direct": med("ray", "tok_s") / med("direct", "tok_s"),
               "direct_tok_s": med("direct", "tok_s"), "ray_tok_s": med("ray", "tok_s"),
               "failed": sum(x["requests"] - x["completed"] for x in rounds)}
    out = {"command": "python -m bench.method.ray_hop " + " ".join(argv if argv is not None else sys.argv[1:]),
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or "cpu",
           "cpus": os.cpu_count(), "startup_s": startup, "summary": summary, "rounds": rounds}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
