"""Start-up with thousands of adapter folders: how long until the server answers, and until every folder serves.

    python -m bench.method.startup [--folders 0,256,1024,4096] [--distinct 16] [--before]

Per folder count N: DIR/ holds N names (`ad-00000` ...) over `--distinct` seeded LoRA weight sets of the tiny demo
base (bench.compare.adapters: PEFT rsLoRA r16 → served form), written before the server starts. One real
`hylorada-serve` with the product's defaults (--startup-wait 5, --load-parallel 4) then gives:

  * ready_s      process start → GET /health 200 (the server answers the base; polled every 0.1 s);
  * engine_s     the same with N = 0 (the base alone): ready_s - engine_s is what the folders cost;
  * first_s      at ready, one request for the *last* name (the one validated last unless asked for): its
                 end-to-end time (it waits for that folder's verdict) and status;
  * all_s        process start → GET /v1/adapters shows every folder serving;
  * right        the sampled names answer with their weight set's tokens (the same greedy tokens as the set's
                 first name; the sets differ from one another).

With `--before`, the largest N is also run as the server behaved before background start-up (--load-parallel 1,
--startup-wait 3600: ready only once every folder is loaded). Writes bench/results/startup.json and startup.png;
the last line printed is a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.proc import free_port, http_ok, launch, stop, wait_ready

ROOT = Path(__file__).resolve().parents[2]
PROMPT = [5, 77, 140, 33, 9, 300]


def weight_sets(base: Path, distinct: int, cache: Path) -> list[Path]:
    from bench.compare.adapters import build_peft, build_served_lora
    return build_served_lora(base, build_peft(base, distinct, cache=cache), cache=cache)


def fill(adapters: Path, sets: list[Path], n: int) -> list[str]:
    names = [f"ad-{i:05d}" for i in range(n)]
    for i, name in enumerate(names):
        shutil.copytree(sets[i % len(sets)], adapters / name, ignore=shutil.ignore_patterns("bench_stamp.json"))
    return names


def greedy(http: httpx.Client, model: str) -> tuple[int, list[int] | None]:
    r = http.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 6, "temperature": 0,
                                           "ignore_eos": True, "return_token_ids": True})
    return r.status_code, (r.json()["choices"][0]["token_ids"] if r.status_code == 200 else None)


def one_run(base: Path, sets: list[Path], n: int, work: Path, extra: tuple[str, ...] = ()) -> dict:
    adapters = work / f"dir-{n}-{len(extra)}"
    names = fill(adapters, sets, n)
    port, log = free_port(), work / f"server-{n}-{len(extra)}.log"
    cmd = [sys.executable, "-m", "hylorada_serve.cli", "--base", str(base), "--adapters", str(adapters),
           "--port", str(port), "--dtype", "float32", "--max-model-len", "512", "--max-num-seqs", "8",
           "--max-loras", "4", "--max-cpu-loras", "16", "--kv-cache-memory-bytes", str(512 << 20), *extra]
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    proc = launch(cmd, log, env={**os.environ, "VLLM_HOST_IP": "127.0.0.1"}, cwd=ROOT)
    try:
        why = wait_ready(proc, lambda: http_ok(url + "/health"), 3600, poll_s=0.1)
        if why is not None:
            raise SystemExit(f"server {why}; see {log}")
        out = {"folders": n, "args": list(extra), "ready_s": round(time.monotonic() - t0, 2)}
        with httpx.Client(base_url=url, timeout=600) as http:
            if names:
                t1 = time.monotonic()
                code, _ = greedy(http, names[-1])
                out.update(first_s=round(time.monotonic() - t1, 3), first_status=code)
            while True:
                rows = http.get("/v1/adapters").json()["data"]
                if sum(r["status"] == "ready" for r in rows) >= n or time.monotonic() - t0 > 3600:
                    break
                time.sleep(0.2)
            out["all_s"] = round(time.monotonic() - t0, 2)
            out["serving"] = sum(r["status"] == "ready" for r in rows)
            sample = names[:len(sets)] + names[len(sets):][::max(1, n // 64)]
            want = {}
            for i, name in enumerate(names[:len(sets)]):
                want[i] = greedy(http, name)[1]
            got = {name: greedy(http, name)[1] for name in sample}
            out["right"] = all(got[name] == want[int(name[3:]) % len(sets)] for name in sample)
            out["sets_differ"] = len({json.dumps(v) for v in want.values()}) > 1
            out["sampled"] = len(sample)
    finally:
        stop(proc, timeout_s=60)
        shutil.rmtree(adapters, ignore_errors=True)
    print(json.dumps(out), flush=True)
    return out


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    now = [r for r in runs if not r["args"]]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    xs = [max(r["folders"], 1) for r in now]
    ax.plot(xs, [r["ready_s"] for r in now], "o-", label="ready (GET /health 200)")
    ax.plot(xs, [r["all_s"] for r in now], "s--", label="every folder serving")
    for r in runs:
        if r["args"]:
            ax.plot([r["folders"]], [r["ready_s"]], "x", ms=10, color="red",
                    label="before: ready only once all loaded (one at a time)")
    ax.set_xscale("log")
    ax.set_xlabel("adapter folders in DIR/ at start-up (0 drawn at 1)")
    ax.set_ylabel("seconds from process start")
    ax.set_title("hylorada-serve start-up (tiny base, 2-core CPU)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folders", default="0,256,1024,4096", help="folder counts, comma-separated")
    p.add_argument("--distinct", type=int, default=16, help="distinct weight sets behind the names")
    p.add_argument("--before", action="store_true", help="also run the largest count as before (blocking start)")
    p.add_argument("--out", default=str(ROOT / "bench/results/startup"), help="output path without extension")
    args = p.parse_args(argv)
    counts = [int(x) for x in args.folders.split(",")]
    from hylorada_serve.demo import prepare
    base, _ = prepare(ROOT / ".cache/demo-tiny")
    sets = weight_sets(base, args.distinct, ROOT / ".cache/bench/startup")
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        runs = [one_run(base, sets, n, work) for n in counts]
        if args.before:
            runs.append(one_run(base, sets, max(counts), work, ("--load-parallel", "1", "--startup-wait", "3600")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    engine = next((r["ready_s"] for r in runs if r["folders"] == 0), None)
    result = {"command": "python -m bench.method.startup " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": f"{platform.machine()} {os.cpu_count()} cores", "distinct": args.distinct,
              "engine_s": engine, "runs": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    plot(runs, out.with_suffix(".png"))
    print(json.dumps({"engine_s": engine, **{f"ready_s@{r['folders']}{'-before' if r['args'] else ''}": r["ready_s"]
                                             for r in runs}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
