"""PNG plots of benchmark results (matplotlib, headless): latency CDFs and sweep curves."""
from __future__ import annotations

import math
from pathlib import Path


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path: str | Path, title: str) -> Path:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_cdfs(runs: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """Empirical CDFs of TTFT, TPOT and e2e latency; runs maps a label to its per-request records (JSON dicts)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, key, name in zip(axes, ("ttft_s", "tpot_s", "e2e_s"), ("TTFT", "TPOT", "end-to-end latency")):
        for label, recs in runs.items():
            v = sorted(1000 * r[key] for r in recs if r.get("error") is None and r.get(key) is not None)
            if v:
                ax.step(v, [(i + 1) / len(v) for i in range(len(v))], where="post", label=label)
        ax.set_xlabel(f"{name} (ms, log scale)")
        ax.set_xscale("log")          # systems differ by orders of magnitude
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    if any(ax.get_legend_handles_labels()[0] for ax in axes):
        axes[0].legend(fontsize=8)
    return _save(plt, fig, path, title)


def plot_sweep(xs: list[float], series: dict[str, list[dict]], path: str | Path, xlabel: str, title: str = "",
               log_x: bool = False, cold: bool = False) -> Path:
    """Panels against x: output tok/s, p99 end-to-end latency and, with `cold`, p99 TTFT of cold requests (each
    adapter's first, bench.load.metrics.cold_and_hot) beside hot ones. series maps a label to one summary per x
    (the 'overall' block of bench.load.metrics.summarize)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3 if cold else 2, figsize=(16 if cold else 11, 4.2))
    a1, a2 = axes[0], axes[1]
    for label, blocks in series.items():
        pts = [(x, b) for x, b in zip(xs, blocks) if b is not None]
        if not pts:
            continue
        x = [p[0] for p in pts]
        a1.plot(x, [p[1]["output_tok_per_s"] for p in pts], marker="o", label=label)
        a2.plot(x, [1000 * p[1]["e2e_s"]["p99"] for p in pts], marker="o", label=label)
        if cold:
            line, = axes[2].plot(x, [1000 * p[1]["ttft_cold_s"]["p99"] for p in pts], marker="o", label=f"{label} cold")
            axes[2].plot(x, [1000 * p[1]["ttft_hot_s"]["p99"] for p in pts], marker="x", ls="--",
                         color=line.get_color(), label=f"{label} hot")
    panels = [(a1, "output tokens/s"), (a2, "p99 end-to-end latency (ms)")]
    if cold:
        panels.append((axes[2], "p99 TTFT (ms): cold / hot requests"))
        axes[2].legend(fontsize=8)
    for ax, yl in panels:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        if log_x and all(x > 0 and not math.isinf(x) for x in xs):
            ax.set_xscale("log", base=2)
    a1.legend(fontsize=8)
    return _save(plt, fig, path, title)
