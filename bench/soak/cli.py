"""Soak: a bounded run of mixed traffic against one real hylorada-serve, with periodic adapter swaps and bad
adapters dropped into DIR/, watching for unexpected errors and resident-memory growth.

    python -m bench.soak [--minutes 10] [--workers 4] [--swap-every 20] [--bad-every 30] [--sample-every 5]
    make soak                     # the same, 10 minutes

Traffic (seeded worker threads): greedy completions (tokens must equal the first answer for that model; for the
swapped adapter one of its two weight sets, never a mix), sampled completions (usage == max_tokens), chat, streams
(must end with [DONE]), clients hanging up after the first chunk, requests for bad/unknown names (must be 404), and
the other routes that reach the engine — /v1/messages (streamed), /v1/responses, /invocations with the SageMaker
adapter header (streamed) and /v1/chat/completions/batch — each must come back whole from the adapter it named,
including on the swapped one while it is replaced.
The swapper alternates DIR/swap-a between the demo LoRA and DoRA weights (one rename) and every 4th time removes it
for 3 s (a 404 for swap-a is expected only then). The dropper puts a broken adapter (bench/soak/bad_adapters.py,
cycling the cases) into DIR/, checks it is refused, then deletes it. RSS = every process of the server's session,
sampled every few seconds; the slope is fitted after the warm-up (first 20 %). At the end every adapter's greedy
answer is compared with hylorada.reference.served.ServedReference; then SIGTERM (must exit 0, no process left).
Writes bench/results/soak.json and soak.png; the last line printed is a JSON summary.

Traffic, swaps and drops: bench/soak/traffic.py. Memory diagnosis (bench/soak/mem.py): --memprobe (malloc in use
vs free, Python objects, per process, and one malloc_trim at the end), --env K=V (e.g. an allocator setting),
--upstream (the same traffic against stock vLLM, without swaps or bad adapters). Growth is reported per minute and
per 1000 requests served.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.compare.servers import UPSTREAM_PLUGINS
from bench.proc import free_port, http_ok, launch, session_rss_mb, stop, wait_ready

from . import mem as soak_mem
from . import report
from .traffic import ADMIN, API, DEMO, N_NEW, PROMPT, SWAP, Soak

ROOT = Path(__file__).resolve().parents[2]


ENGINE = ["--dtype", "float32", "--max-model-len", "512", "--max-num-seqs", "8", "--max-loras", "4",
          "--max-cpu-loras", "8", "--kv-cache-memory-bytes", str(512 << 20)]


def start(base: Path, adapters: Path, log: Path, a, env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if a.upstream:     # stock vLLM, same engine settings, the same adapters fixed at start (swap-a = demo-lora)
        cmd = soak_mem.upstream_cmd(base, port, {n: adapters / n for n in [*DEMO, SWAP]}, ENGINE)
        env = {**env, "VLLM_PLUGINS": UPSTREAM_PLUGINS}
    else:
        cmd = [sys.executable, "-m", "hylorada_serve.cli", "--base", str(base), "--adapters", str(adapters), "--port",
               str(port), "--api-key", API, "--admin-key", ADMIN, "--stable-seconds", "1", "--poll-interval", "0.5",
               *ENGINE]
    proc = launch(cmd, log, env={**os.environ, "VLLM_HOST_IP": "127.0.0.1", **env}, cwd=ROOT)
    print(f"server pid {proc.pid} (own session), log {log}", flush=True)
    url = f"http://127.0.0.1:{port}"
    try:
        if wait_ready(proc, lambda: http_ok(url + "/health"), a.start_timeout) is None:
            return proc, url
    except BaseException:
        stop_server(proc)
        raise
    stop_server(proc)
    raise SystemExit(f"server did not start; see {log}")


def stop_server(proc: subprocess.Popen) -> tuple[int | None, int]:
    """SIGTERM to the server (it stops its engine), up to 90 s, 2 s for its session to empty; then SIGKILL what is
    left. (exit code, processes of its session still alive before that SIGKILL)."""
    return stop(proc, signal.SIGTERM, timeout_s=90, settle_s=2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="length of the traffic phase (default 10)")
    p.add_argument("--workers", type=int, default=4, help="client threads sending requests (default 4)")
    p.add_argument("--swap-every", type=float, default=20.0, help="seconds between swaps of DIR/swap-a (default 20)")
    p.add_argument("--bad-every", type=float, default=30.0, help="seconds between bad adapters dropped (default 30)")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    p.add_argument("--warmup-frac", type=float, default=0.2,
                   help="share of the run before the slope is fitted (default 0.2)")
    p.add_argument("--window-minutes", type=float, default=10.0,
                   help="growth is also fitted per window of about this length, at least 3 (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the traffic mix (default 0)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak"),
                   help="result path without extension: writes OUT.json and OUT.png (default bench/results/soak)")
    p.add_argument("--start-timeout", type=float, default=300.0, help="seconds the server may take to start")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="extra environment for the server")
    p.add_argument("--memprobe", action="store_true", help="per-process malloc/Python probe (bench/soak/memprobe)")
    p.add_argument("--upstream", action="store_true", help="stock vLLM instead of hylorada-serve (no swaps, no bad)")
    a = p.parse_args(argv)
    for opt in ("minutes", "workers", "window_minutes", "sample_every", "start_timeout"):
        if not getattr(a, opt) > 0:
            p.error(f"--{opt.replace('_', '-')} must be > 0 (got {getattr(a, opt)})")
    if not 0 <= a.warmup_frac < 1:
        p.error(f"--warmup-frac must be in [0, 1) (got {a.warmup_frac})")
    if any("=" not in kv for kv in a.env):
        p.error(f"--env takes K=V (got {[kv for kv in a.env if '=' not in kv]})")
    env = dict(kv.split("=", 1) for kv in a.env)
    from hylorada_serve.demo import prepare

    base, spare = prepare(ROOT / ".cache" / "hylorada-bench-hotswap")
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    adapters = work / "adapters"
    adapters.mkdir()
    for n in DEMO:
        shutil.copytree(spare / n, adapters / n)
    shutil.copytree(spare / "demo-lora", adapters / SWAP)
    probe_dir = work / "memprobe"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("soak: SIGTERM"))   # a bounded run stops its server too
    proc, url = start(base, adapters, work / "server.log", a,
                      soak_mem.probe_env(env, probe_dir) if a.memprobe else env)
    soak = Soak(url, adapters, spare, a)
    samples, code, left = [], None, -1
    try:
        with httpx.Client(base_url=url, headers=soak.h, timeout=120) as http:
            for m in ["tiny-llama", *DEMO]:
                soak.baseline[m] = soak.greedy(http, m).json()["choices"][0]["token_ids"]
            soak.t0 = time.time()
            threads = [threading.Thread(target=soak.worker, args=(a.seed + i,), daemon=True) for i in range(a.workers)]
            if not a.upstream:
                threads += [threading.Thread(target=soak.swapper, daemon=True),
                            threading.Thread(target=soak.dropper, daemon=True)]
            for t in threads:
                t.start()
            end = soak.t0 + a.minutes * 60
            while time.time() < end and proc.poll() is None:
                rss, nproc, by = session_rss_mb(proc.pid)
                with soak.lock:
                    done = sum(soak.outcomes.values())
                    bad = sum(v for k, v in soak.outcomes.items() if k.endswith("UNEXPECTED"))
                samples.append({"t": round(time.time() - soak.t0, 1), "rss_mb": round(rss, 1), "processes": nproc, "by_process": by,
                                "requests": done, "unexpected": bad})
                time.sleep(min(a.sample_every, max(0.0, end - time.time())))
            soak.stop.set()
            for t in threads:
                t.join(timeout=120)
            health = http.get("/health").status_code
            adm = {} if a.upstream else soak.status(http)
            served = {m: soak.greedy(http, m).json()["choices"][0]["token_ids"] for m in ["tiny-llama", *DEMO, SWAP]}
            if a.memprobe:                  # each process: RSS before/after one malloc_trim(0)
                (probe_dir / "trim").touch()
                time.sleep(4)
    finally:
        code, left = stop_server(proc)
    dirs = {"tiny-llama": None, **{m: spare / m for m in DEMO}, SWAP: spare / soak.swap_src}
    if a.upstream:                          # stock vLLM serves every folder as plain LoRA: only consistency counts
        correct = {m: served[m] == (soak.baseline.get(m) or soak.baseline["demo-lora"]) for m in dirs}
    else:
        ref = report.reference_tokens(base, dirs, PROMPT, N_NEW)
        correct = {m: served[m] == ref[m] for m in dirs}
    warm = a.warmup_frac * a.minutes * 60
    slope = report.slope_mb_per_min(samples, warm)
    grow = report.growth(samples, warm, windows=max(3, round(a.minutes * (1 - a.warmup_frac) / a.window_minutes)))
    probe = soak_mem.summarise(probe_dir, soak.t0, warm, samples) if a.memprobe else None
    unexpected = sum(v for k, v in soak.outcomes.items() if k.endswith("UNEXPECTED"))
    out = {"bench": "soak", "minutes": a.minutes, "workers": a.workers, "requests": sum(soak.outcomes.values()),
           "unexpected_errors": unexpected, "outcomes": dict(sorted(soak.outcomes.items())),
           "unexpected_first": soak.unexpected, "rss": slope, "growth": grow, "memprobe": probe,
           "server": "upstream vLLM" if a.upstream else "hylorada-serve", "server_env": env,
           "warmup_s": warm, "samples": samples,
           "swaps": soak.swaps, "swaps_ok": sum(s["ok"] for s in soak.swaps), "bad_dropped": len(soak.bad_log),
           "bad_refused": sum(b["refused"] for b in soak.bad_log), "bad_log": soak.bad_log,
           "adapters_listed_at_end": sorted(adm), "health_at_end": health, "correct_vs_reference": correct,
           "all_correct": all(correct.values()), "sigterm_exit_code": code, "processes_left": left,
           "load_average": os.getloadavg(), "command": " ".join(["python -m bench.soak", *(argv or sys.argv[1:])])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(out, indent=1) + "\n")
    label = out["server"] + "".join(f" {k}={v}" for k, v in env.items())
    report.plot(samples, warm, slope, Path(a.out + ".png"),
                f"{label} soak: {a.minutes:g} min, {out['requests']} requests, {unexpected} unexpected", probe)
    shutil.rmtree(work, ignore_errors=True)
    summary = {k: out[k] for k in ("minutes", "requests", "unexpected_errors", "swaps_ok", "bad_dropped", "bad_refused",
                                   "all_correct", "sigterm_exit_code", "processes_left")}
    summary["rss_slope_mb_per_min"] = slope.get("slope_mb_per_min")
    summary["rss_last_mb"] = slope.get("rss_last_mb")
    summary["rss_mb_per_1000_requests"] = grow.get("total", {}).get("mb_per_1000_requests")
    print(json.dumps(summary))
    ok = unexpected == 0 and out["all_correct"] and (a.upstream or code == 0) and len(soak.swaps) == out["swaps_ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
