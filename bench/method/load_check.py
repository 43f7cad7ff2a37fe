"""What the engine worker's adapter check costs per load, full vs behind a checked stamp (issue 18: a cold load runs
inside the engine step).

    python -m bench.method.load_check [--base tiny-small] [--adapters 4] [--reps 30] [--out bench/results/load_check.json]

The worker validates a served-form folder before vLLM reads it (patches/loading.py `load_hylorada`), on its first
load and on every reload after its CPU cache evicted it. Three ways, each timed `--reps` times per adapter, one
private copy of each bench adapter (r16, all seven projections; bench.compare.adapters builds them):
  full       no stamp: load_served reads every LoRA tensor and checks its values (what a plain vLLM + plugin does)
  stamped    a checked stamp written by the key the server made (hylorada.format.stamp): the stamp verified, the
             LoRA shapes from the safetensors header, the structure and the side file still checked
  read       safetensors.torch.load_file of adapter_model.safetensors: the read vLLM's own loader does next,
             whichever way the check went (the floor both ways add to)
Writes the JSON (per-way median / p10 / p90 ms, bytes per adapter, the full/stamped ratio); the last line printed is
that JSON.
"""
from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


def timed(fn, reps: int) -> list[float]:
    """Milliseconds of `reps` calls of fn(), after one untimed call (imports, page cache)."""
    fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def summary(ms: list[float]) -> dict:
    q = statistics.quantiles(ms, n=10) if len(ms) > 1 else [ms[0]] * 9
    return {"median_ms": round(statistics.median(ms), 3), "p10_ms": round(q[0], 3), "p90_ms": round(q[-1], 3),
            "n": len(ms)}


def measure(base: Path, adapters: list[Path], reps: int, max_rank: int = 16) -> dict:
    """Per-way timings over private copies of `adapters` (each checked against `base` at `max_rank`)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from hylorada.format import stamp
    from hylorada.format.layout import ADAPTER_WEIGHTS
    from hylorada_patches.loading import load_hylorada, stamped

    cfg = AutoConfig.from_pretrained(base)
    key = secrets.token_bytes(32)
    ways: dict[str, list[float]] = {"full": [], "stamped": [], "read": []}
    sizes = []
    with tempfile.TemporaryDirectory(prefix="load-check-") as tmp:
        for i, src in enumerate(adapters):
            plain, marked = Path(tmp) / f"plain-{i}", Path(tmp) / f"stamped-{i}"
            shutil.copytree(src, plain)
            shutil.copytree(src, marked)
            stamp.write_stamp(marked, key, stamp.context(cfg, max_rank))
            assert not stamped(str(plain), cfg, max_rank, key) and stamped(str(marked), cfg, max_rank, key)
            sizes.append(sum(f.stat().st_size for f in plain.iterdir() if f.is_file()))

            def full(p=plain):
                return load_hylorada(str(p), cfg, max_rank)

            def fast(p=marked):
                ok = stamped(str(p), cfg, max_rank, key)
                return load_hylorada(str(p), cfg, max_rank, values_checked=ok)

            ways["full"] += timed(full, reps)
            ways["stamped"] += timed(fast, reps)
            ways["read"] += timed(lambda p=plain: load_file(str(p / ADAPTER_WEIGHTS)), reps)
    out = {way: summary(ms) for way, ms in ways.items()}
    out["full_over_stamped"] = round(out["full"]["median_ms"] / out["stamped"]["median_ms"], 2)
    out["bytes_per_adapter"] = int(statistics.median(sizes))
    out["adapters"] = len(adapters)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="tiny-small", help="tiny-small (default, the 26M bench base), "
                    "smollm2-135m-instruct, or a model folder (bench.compare.adapters.resolve_base)")
    ap.add_argument("--adapters", type=int, default=4, help="distinct bench adapters timed (default 4)")
    ap.add_argument("--reps", type=int, default=30, help="timed loads per adapter and way (default 30)")
    ap.add_argument("--out", type=Path, default=RESULTS / "load_check.json")
    a = ap.parse_args(argv)
    if a.adapters < 1 or a.reps < 1:
        ap.error("--adapters and --reps must be >= 1")
    from bench.compare.adapters import build_hylorada, resolve_base
    base, cache = resolve_base(a.base)
    adapters = build_hylorada(base, a.adapters, cache)
    res = {"base": a.base, "rank": 16, "reps": a.reps, **measure(base, adapters, a.reps)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
