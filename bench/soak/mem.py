"""Memory diagnosis for the soak (bench/soak/cli.py): where resident memory goes, and a plain-vLLM control.

    --memprobe    bench/soak/memprobe/sitecustomize.py runs in every server process (see its docstring); at the end the
                  soak asks each process for one malloc_trim(0) and `summarise` turns the probe lines into, per
                  process, RSS split into what glibc malloc has in use vs holds free, the [heap]/arena maps, Python
                  blocks and objects — each as a slope after warm-up per minute and per 1000 requests.
    --upstream    the same traffic against stock vLLM (`python -m vllm.entrypoints.openai.api_server`, our plugin
                  excluded by VLLM_PLUGINS, the demo adapters as --lora-modules): is the growth vLLM's own?
    --env K=V     extra environment for the server (e.g. MALLOC_ARENA_MAX=2 for an allocator A/B).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

PROBE_DIR = Path(__file__).resolve().parent / "memprobe"


def probe_env(env: dict, out_dir: Path, every_s: float = 15.0) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = ":".join(p for p in (str(PROBE_DIR), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "HYLORADA_MEMPROBE_DIR": str(out_dir), "HYLORADA_MEMPROBE_EVERY": str(every_s)}


def upstream_cmd(base: Path, port: int, adapters: dict[str, Path], engine: list[str]) -> list[str]:
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(base), "--served-model-name",
            "tiny-llama", "--host", "127.0.0.1", "--port", str(port), "--gpu-memory-utilization", "0.3",
            "--enable-lora", "--max-lora-rank", "16", *engine,
            "--lora-modules", *[f"{n}={p}" for n, p in adapters.items()]]


def _slope(xs: list[float], ys: list[float]) -> float | None:
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx, 3) if sxx else None


def _requests_at(samples: list[dict], t: float) -> float:
    """Requests finished at soak time t (linear between the soak's own samples)."""
    prev = None
    for s in samples:
        if s["t"] >= t:
            if prev is None or s["t"] == prev["t"]:
                return s["requests"]
            f = (t - prev["t"]) / (s["t"] - prev["t"])
            return prev["requests"] + f * (s["requests"] - prev["requests"])
        prev = s
    return samples[-1]["requests"] if samples else 0


SERIES = {"rss": lambda r: r["rss_kb"], "malloc_in_use": lambda r: r["malloc"]["in_use_kb"],
          "malloc_free": lambda r: r["malloc"]["free_kb"], "heap_map": lambda r: r["heap_kb"],
          "arena_maps": lambda r: r["arena_maps_kb"], "big_anon": lambda r: r["big_anon_kb"],
          "file_maps": lambda r: r["file_maps_kb"]}


def summarise(out_dir: Path, t0: float, warmup_s: float, samples: list[dict]) -> dict:
    """Per probed process: slopes (MiB/min and MiB per 1000 requests) after warm-up of each SERIES, Python block /
    object growth, the object types that grew most, and what one malloc_trim(0) at the end gave back."""
    procs = {}
    for f in sorted(out_dir.glob("*.jsonl")):
        recs = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        rows = [r for r in recs if "comm" in r]
        if not rows:
            continue
        trim = next((r for r in recs if r.get("trim")), None)
        comm = rows[-1]["comm"]
        key = comm if comm not in procs else f"{comm}:{f.stem}"
        after = [r for r in rows if r["t"] - t0 >= warmup_s]
        tm = [(r["t"] - t0) / 60 for r in after]
        kq = [_requests_at(samples, r["t"] - t0) / 1000 for r in after]
        p = {"pid": int(f.stem), "samples": len(rows), "samples_after_warmup": len(after)}
        for name, get in SERIES.items():
            ys = [get(r) / 1024 for r in after]
            p[name] = {"first_mb": round(get(rows[0]) / 1024, 1),
                       "after_warmup_mb": round(ys[0], 1) if ys else None,
                       "last_mb": round(get(rows[-1]) / 1024, 1),
                       "mb_per_min": _slope(tm, ys), "mb_per_1000_requests": _slope(kq, ys)}
        p["arenas_last"] = rows[-1]["malloc"].get("arenas")
        p["threads_last"] = rows[-1].get("threads")
        for name in ("py_blocks", "gc_objects"):
            xs, have = [x for x, r in zip(tm, after) if name in r], [r[name] for r in after if name in r]
            p[name] = {"after_warmup": have[0] if have else None, "last": have[-1] if have else None,
                       "per_min": _slope(xs, have)}
        typed = [r for r in after if "types" in r]
        if len(typed) >= 2:
            a, b = dict(typed[0]["types"]), dict(typed[-1]["types"])
            p["types_grown"] = sorted(((k, b.get(k, 0) - a.get(k, 0)) for k in set(a) | set(b)),
                                      key=lambda kv: -abs(kv[1]))[:8]
        if trim:
            p["malloc_trim_at_end"] = {"rss_before_mb": round(trim["before"]["rss_kb"] / 1024, 1),
                                       "rss_after_mb": round(trim["after"]["rss_kb"] / 1024, 1),
                                       "released_mb": round((trim["before"]["rss_kb"] - trim["after"]["rss_kb"]) / 1024, 1),
                                       "malloc_free_before_mb": round(trim["before"]["free_kb"] / 1024, 1)}
        p["series"] = [[round(r["t"] - t0, 1), round(r["rss_kb"] / 1024, 1), round(r["malloc"]["in_use_kb"] / 1024, 1),
                        round(r["malloc"]["free_kb"] / 1024, 1)] for r in rows]
        procs[key] = p
    return {"series_columns": ["t_s", "rss_mb", "malloc_in_use_mb", "malloc_free_mb"], "processes": procs}
