"""What one full scan of DIR/ costs the server, by folder count (issue 18: thousands of adapter folders).

    python -m bench.method.scan_cost [--folders 256,1024,4096] [--reps 5] [--out bench/results/scan_cost.json]

The watcher's pass starts with `hylorada_serve.scan.observe`: list DIR/ and walk every folder (names, sizes, mtimes:
the completion rule's signature). Here DIR/ holds N folders of the served form's four files (hard links to one set,
so N costs no disk; the scan only lists and stats them, as it does real adapters) plus a `.ready` marker each.
Per count: wall and CPU ms per scan (median of --reps, after one untimed scan), and the share of one core a server
would spend on it scanning every 0.5 s (--poll-interval, the timer without file events) and every 5 s
(--rescan-interval, the timer while events work and nothing waits on time). The last line printed is the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
FILES = {"adapter_config.json": 545, "adapter_model.safetensors": 4 << 20, "hylorada.json": 524,
         "hylorada_dynamic.safetensors": 160 << 10}          # the 26M bench adapters' sizes (bytes)


def build_dir(root: Path, n: int, template: Path) -> None:
    """root/a0 .. root/a{n-1}, each the template's files hard-linked, then an empty .ready."""
    for i in range(n):
        d = root / f"a{i}"
        d.mkdir()
        for name in FILES:
            os.link(template / name, d / name)
        (d / ".ready").touch()


def measure(counts: list[int], reps: int) -> list[dict]:
    from hylorada_serve.scan import observe

    out = []
    with tempfile.TemporaryDirectory(prefix="scan-cost-") as tmp:
        template = Path(tmp) / "template"
        template.mkdir()
        for name, size in FILES.items():
            with open(template / name, "wb") as f:
                f.write(b"\0" * size)
        for n in counts:
            root = Path(tmp) / f"dir{n}"
            root.mkdir()
            build_dir(root, n, template)
            seen = observe(root)
            assert seen is not None and len(seen) == n and all(s.signature for s in seen)
            wall, cpu = [], []
            for _ in range(reps):
                w0, c0 = time.perf_counter(), time.process_time()
                observe(root)
                wall.append((time.perf_counter() - w0) * 1e3)
                cpu.append((time.process_time() - c0) * 1e3)
            c = statistics.median(cpu)
            out.append({"folders": n, "wall_ms": round(statistics.median(wall), 2), "cpu_ms": round(c, 2),
                        "core_share_every_0.5s": round(c / 500, 4), "core_share_every_5s": round(c / 5000, 4)})
            print(f"{n:6d} folders: {out[-1]['wall_ms']:8.1f} ms wall, {c:8.1f} ms CPU per scan; "
                  f"{100 * c / 500:5.1f} % of a core every 0.5 s, {100 * c / 5000:5.2f} % every 5 s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folders", default="256,1024,4096", help="comma-separated folder counts (default 256,1024,4096)")
    ap.add_argument("--reps", type=int, default=5, help="timed scans per count (default 5)")
    ap.add_argument("--out", type=Path, default=RESULTS / "scan_cost.json")
    a = ap.parse_args(argv)
    try:
        counts = [int(x) for x in a.folders.split(",")]
    except ValueError:
        ap.error(f"--folders: comma-separated integers (got {a.folders!r})")
    if a.reps < 1 or not counts or min(counts) < 1:
        ap.error("--reps and every --folders count must be >= 1")
    res = {"bench": "scan_cost", "reps": a.reps, "machine": f"{os.uname().machine} {os.cpu_count()} cpus",
           "points": measure(counts, a.reps)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
