"""Pieces of the soak (bench/soak/cli.py) that do not talk HTTP: the RSS slope after warm-up (a session's RSS:
bench.proc.session_rss_mb), the end-of-run correctness check against hylorada.reference.served.ServedReference, and the plot."""
from __future__ import annotations

from pathlib import Path


def slope_mb_per_min(samples: list[dict], warmup_s: float) -> dict:
    """Least-squares slope of RSS (MiB) against time (min) for samples after `warmup_s`; also first/last/max."""
    pts = [(s["t"] / 60, s["rss_mb"]) for s in samples if s["t"] >= warmup_s]
    if len(pts) < 3:
        return {"slope_mb_per_min": None, "samples_after_warmup": len(pts)}
    n = len(pts)
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else 0.0
    ys = [y for _, y in pts]
    return {"slope_mb_per_min": round(slope, 3), "samples_after_warmup": n, "rss_after_warmup_first_mb": round(ys[0], 1),
            "rss_last_mb": round(ys[-1], 1), "rss_max_mb": round(max(ys), 1), "rss_min_after_warmup_mb": round(min(ys), 1),
            "slope_pct_per_hour": round(100 * slope * 60 / my, 2) if my else None}


def growth(samples: list[dict], warmup_s: float, windows: int = 3) -> dict:
    """Growth after warm-up, total and per process: least-squares MiB/min and MiB per 1000 requests served,
    plus MiB/min in `windows` equal time windows (does it level off?)."""
    after = [s for s in samples if s["t"] >= warmup_s]
    if len(after) < 3 * windows:
        return {}

    def fit(xs, ys):
        n = len(xs)
        mx, my = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx, 3) if sxx else None

    def series(get):
        tm, kq, ys = [s["t"] / 60 for s in after], [s["requests"] / 1000 for s in after], [get(s) for s in after]
        k = len(after) // windows
        return {"mb_per_min": fit(tm, ys), "mb_per_1000_requests": fit(kq, ys), "mb_first": ys[0], "mb_last": ys[-1],
                "mb_per_min_by_window": [fit(tm[i * k:(i + 1) * k], ys[i * k:(i + 1) * k]) for i in range(windows)]}

    names = sorted({k for s in after for k in s.get("by_process", {})})
    return {"minutes_after_warmup": round((after[-1]["t"] - after[0]["t"]) / 60, 2),
            "requests_after_warmup": after[-1]["requests"] - after[0]["requests"],
            "total": series(lambda s: s["rss_mb"]),
            "by_process": {n: series(lambda s, n=n: s.get("by_process", {}).get(n, 0.0)) for n in names}}


def reference_tokens(base: Path, adapter_dirs: dict[str, Path | None], prompt: list[int], n_new: int) -> dict:
    """name -> greedy token ids from the served-form reference (HF, float32); None = the base model."""
    from hylorada.reference.served import ServedReference
    from hylorada.format.load import load_served

    ref = ServedReference(base)
    out = {}
    for name, d in adapter_dirs.items():
        ad = load_served(d) if d is not None else None
        out[name] = [int(t) for t in ref.greedy([prompt], [ad], n_new)[0][0]]
    return out


def plot(samples: list[dict], warmup_s: float, slope: dict, path: Path, title: str, probe: dict | None = None) -> None:
    """RSS per process and requests over time; with a memprobe summary, a third panel: what glibc malloc has in
    use and holds free in each engine process."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(3 if probe else 2, 1, figsize=(8, 9 if probe else 6), sharex=True)
    a1, a2 = axes[0], axes[-1]
    a1.plot(t, [s["rss_mb"] for s in samples], label="RSS, all server processes", lw=2)
    for name in sorted({k for s in samples for k in s.get("by_process", {})}):
        a1.plot(t, [s.get("by_process", {}).get(name, 0) for s in samples], lw=1, label=name)
    a1.axvline(warmup_s / 60, color="gray", ls="--", label="end of warm-up")
    if slope.get("slope_mb_per_min") is not None:
        a1.set_title(f"{title}\nslope after warm-up {slope['slope_mb_per_min']:+.2f} MiB/min")
    a1.set_ylabel("MiB")
    a1.legend(loc="center right", fontsize=7)
    if probe:
        a3 = axes[1]
        for name, p in probe["processes"].items():
            if not name.startswith("VLLM"):
                continue
            ts = [r[0] / 60 for r in p["series"]]
            a3.plot(ts, [r[2] for r in p["series"]], lw=1.5, label=f"{name}: malloc in use")
            a3.plot(ts, [r[3] for r in p["series"]], lw=1.5, ls="--", label=f"{name}: malloc free (held)")
        a3.axvline(warmup_s / 60, color="gray", ls="--")
        a3.set_ylabel("MiB")
        a3.legend(loc="center right", fontsize=7)
    a2.plot(t, [s["requests"] for s in samples], label="requests finished")
    a2.plot(t, [s["unexpected"] for s in samples], label="unexpected errors", color="red")
    a2.set_xlabel("minutes")
    a2.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
