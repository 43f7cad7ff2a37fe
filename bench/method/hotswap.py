"""Hot-swap latency: from an adapter folder being complete in DIR/ to the first token served from it.

    python -m bench.method.hotswap [--swaps 10] [--modes marker,stable] [--poll-interval 0.5] [--stable-seconds 2]
                                   [--extra-folders N]

Starts one real `hylorada-serve` (the --demo base and adapters, cached under .cache/), then per mode and swap:
writes a new version of DIR/bench-swap (alternating the demo-lora and demo-dora weights), notes the instant the
folder is complete (mode `marker`: folder published by one rename with a `.ready` file inside; mode `stable`:
the same without a marker, so the server waits --stable-seconds), and streams 1-token requests for
`bench-swap` back to back until one carries the new version in x-hylorada-adapter-version; the latency is the
arrival of that response's first token minus the completion instant. The server's own load time (copy,
validate, engine add_lora) comes from GET /v1/adapters. Writes bench/results/hotswap.json and hotswap.png;
the last line printed is a JSON summary. --extra-folders N: N more folders in DIR/, all serving before the first
swap (a hot-swap among thousands of adapters).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.proc import free_port, http_ok, launch, stop, wait_ready
from hylorada.format.atomic import atomic_dir

ROOT = Path(__file__).resolve().parents[2]
NAME = "bench-swap"


def start_server(base: Path, adapters: Path, log: Path, args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "hylorada_serve.cli", "--base", str(base), "--adapters", str(adapters),
           "--port", str(port), "--poll-interval", str(args.poll_interval), "--stable-seconds", str(args.stable_seconds),
           "--dtype", "float32", "--max-model-len", "512", "--max-num-seqs", "8", "--max-loras", "4",
           "--kv-cache-memory-bytes", str(512 << 20)]
    proc = launch(cmd, log, env={**os.environ, "VLLM_HOST_IP": "127.0.0.1"}, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    if wait_ready(proc, lambda: http_ok(url + "/health"), 300) is None:
        return proc, url
    stop(proc, timeout_s=60)
    raise SystemExit(f"server did not start; see {log}")


def publish(adapters: Path, src: Path, marker: bool) -> float:
    """Write a new DIR/NAME from src (atomic_dir: hidden temp sibling, fsync, one rename over the old version);
    returns the instant the folder is complete."""
    with atomic_dir(adapters / NAME, replace=True) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        if marker:
            (tmp / ".ready").write_text("")
    return time.time()


def add_extra(adapters: Path, src: Path, n: int) -> None:
    """DIR/extra-0 .. extra-{n-1} before the server starts: src's files hard-linked (no disk), each with a `.ready`
    marker; folders the server holds beside the one swapped (issue 18: a hot-swap among thousands)."""
    files = [f for f in src.iterdir() if f.is_file() and f.name != ".ready"]
    for i in range(n):
        d = adapters / f"extra-{i}"
        d.mkdir()
        for f in files:
            os.link(f, d / f.name)
        (d / ".ready").touch()


def wait_serving(http: httpx.Client, n: int, timeout_s: float) -> float:
    """Seconds until GET /v1/adapters shows n adapters ready (progress every ~10 s); SystemExit after timeout_s."""
    t0 = last = time.time()
    while time.time() - t0 < timeout_s:
        ready = sum(a["status"] == "ready" for a in http.get("/v1/adapters").json()["data"])
        if ready >= n:
            return time.time() - t0
        if time.time() - last > 10:
            print(f"  {ready}/{n} extra folders serving ({time.time() - t0:.0f} s)", flush=True)
            last = time.time()
        time.sleep(0.5)
    raise SystemExit(f"only {ready} of {n} extra folders serving after {timeout_s:.0f} s")


def first_token_of(http: httpx.Client, want: int, deadline: float) -> tuple[float, int]:
    """Stream 1-token requests until one is served by version `want`; (first-token time, requests sent)."""
    n = 0
    while time.time() < deadline:
        n += 1
        body = {"model": NAME, "prompt": [5, 77, 140], "max_tokens": 1, "stream": True, "temperature": 0}
        with http.stream("POST", "/v1/completions", json=body) as r:
            ver = r.headers.get("x-hylorada-adapter-version")
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("data: {"):
                    t = time.time()
                    for _ in lines:                  # drain the rest of this response
                        pass
                    if r.status_code == 200 and ver is not None and int(ver) == want:
                        return t, n
                    break
    raise TimeoutError(f"version {want} never served")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--swaps", type=int, default=10)
    ap.add_argument("--modes", default="marker,stable")
    ap.add_argument("--poll-interval", type=float, default=0.5)
    ap.add_argument("--stable-seconds", type=float, default=2.0)
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "hylorada-bench-hotswap"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--extra-folders", type=int, default=0,
                    help="folders in DIR/ beside the swapped one (demo-lora hard-linked), all serving before the "
                    "first swap (default 0)")
    args = ap.parse_args()
    if args.extra_folders < 0 or args.swaps < 1:
        ap.error("--extra-folders must be >= 0 and --swaps >= 1")

    from hylorada_serve.demo import prepare
    base, built = prepare(args.cache)
    work = Path(tempfile.mkdtemp(prefix="hotswap-"))
    adapters = work / "adapters"
    adapters.mkdir()
    add_extra(adapters, built / "demo-lora", args.extra_folders)
    proc, url = start_server(base, adapters, work / "server.log", args)
    rows, version, settle_s = [], 0, 0.0
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            if args.extra_folders:
                settle_s = wait_serving(http, args.extra_folders, 120 + 0.5 * args.extra_folders)
                print(f"{args.extra_folders} extra folders serving {settle_s:.0f} s after ready", flush=True)
            for mode in args.modes.split(","):
                for i in range(args.swaps):
                    src = built / ("demo-lora" if version % 2 == 0 else "demo-dora")
                    version += 1
                    t_complete = publish(adapters, src, marker=mode == "marker")
                    t_first, n = first_token_of(http, version, t_complete + 60)
                    st = next(a for a in http.get("/v1/adapters").json()["data"] if a["name"] == NAME)
                    rows.append({"mode": mode, "swap": i, "version": version, "latency_s": t_first - t_complete,
                                 "server_load_ms": st["load_ms"], "requests_until_served": n})
                    print(f"{mode:7s} swap {i:2d} v{version:<3d} complete->first token {1e3 * rows[-1]['latency_s']:7.1f} ms"
                          f"  (server load {st['load_ms']} ms)", flush=True)
                    time.sleep(0.3)
    finally:
        code, _ = stop(proc, timeout_s=60)
        shutil.rmtree(work, ignore_errors=True)

    summary = {"bench": "hotswap", "swaps_per_mode": args.swaps, "poll_interval_s": args.poll_interval,
               "stable_seconds": args.stable_seconds, "server_exit_code": code,
               "extra_folders": args.extra_folders, "extra_serving_after_ready_s": round(settle_s, 1),
               "machine": f"{platform.machine()} {os.cpu_count()} cpus (shared)", "modes": {}}
    for mode in args.modes.split(","):
        lat = sorted(r["latency_s"] for r in rows if r["mode"] == mode)
        loads = [r["server_load_ms"] for r in rows if r["mode"] == mode]
        summary["modes"][mode] = {"p50_ms": round(1e3 * statistics.median(lat), 1),
                                  "p90_ms": round(1e3 * lat[int(0.9 * (len(lat) - 1))], 1),
                                  "max_ms": round(1e3 * lat[-1], 1), "mean_ms": round(1e3 * statistics.mean(lat), 1),
                                  "server_load_p50_ms": statistics.median(loads)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hotswap.json").write_text(json.dumps({"summary": summary, "swaps": rows}, indent=2) + "\n")
    plot(rows, out / "hotswap.png", args)
    print(json.dumps(summary))
    return 0


def plot(rows: list[dict], path: Path, args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for mode, marker in (("marker", "o"), ("stable", "s")):
        pts = [r for r in rows if r["mode"] == mode]
        if pts:
            ax.plot([r["swap"] for r in pts], [1e3 * r["latency_s"] for r in pts], marker=marker, label=f"{mode}: latency")
            ax.plot([r["swap"] for r in pts], [r["server_load_ms"] for r in pts], marker=marker, linestyle=":",
                    label=f"{mode}: server load")
    ax.set_xlabel("swap")
    ax.set_ylabel("ms")
    ax.set_yscale("log")
    ax.set_title(f"hot-swap: folder complete -> first token (poll {args.poll_interval}s, stable {args.stable_seconds}s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
