"""The served HyLoRADA layer at Llama-8B projection shapes: time vs the base GEMM, and achieved bandwidth.

    python -m bench.kernels.served_layer                     # CUDA: bf16, Llama-8B shapes, 8 adapters r16
    python -m bench.kernels.served_layer --cpu-smoke         # CPU: tiny shapes, float32 (checks, not numbers)

Served form (DESIGN §3), per token t with adapter a = idx[t] and position scale p[t]:
    y[t] = c[a] * (W x[t] + p[t] * B'[a] (A[a] x[t]))          (a = -1: base only, y[t] = W x[t]; every method takes it)
Methods:
  base      x @ W^T                                          (the floor)
  gather    per-token gather of each token's A, B', c (what vLLM's CPU LoRA path does), one einsum each
  grouped   tokens sorted by adapter; one shrink and one expand matmul per adapter segment, then x c[idx]
  peft_dora PEFT-style DoRA per adapter segment: recomputes ||W + s B A|| per row every forward
  fused     base GEMM, then the Triton shrink / expand+epilogue kernels (bench/kernels/triton_served.py); only
            listed where triton and CUDA are both present; never compiled on a GPU yet (checked under the interpreter)
Every method is checked against a per-token loop in float32 before it is timed. Bandwidth counts the bytes a
perfect kernel must move (W, the adapters in use, x and y); the fraction is of the GPU's peak where known.
Last line: a JSON object. Results: bench/results/kernels_{device}.json and .png.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

SHAPES_8B = {"q_proj/o_proj": (4096, 4096), "k_proj/v_proj": (4096, 1024), "gate/up_proj": (4096, 14336),
             "down_proj": (14336, 4096)}
PEAK_BYTES_S = {"H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}


def make_inputs(T, d_in, d_out, n_adapters, rank, dtype, device, seed=0, n_base=0):
    """n_base: that many tokens of the base model alone (idx -1), as in a batch mixing base and adapter requests."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s, std=1.0: (torch.randn(*s, generator=g) * std).to(device=device, dtype=dtype)  # noqa: E731
    idx = torch.arange(T) % n_adapters
    idx[:n_base] = -1
    idx = torch.sort(idx).values.to(device)                            # segments: S-LoRA's sorted layout
    return dict(x=r(T, d_in), W=r(d_out, d_in, std=d_in ** -0.5), A=r(n_adapters, rank, d_in, std=d_in ** -0.5),
                B=r(n_adapters, d_out, rank, std=0.02), c=(1 + r(n_adapters, d_out, std=0.05)),
                p=(1 + r(T, std=0.1)), idx=idx, m=r(n_adapters, d_out).abs() + 1)


def base(x, W, **_):
    return x @ W.T


def reference(x, W, A, B, c, p, idx, **_):
    """Semantics as a loop: y[t] = c[a] * (W x[t] + p[t] * B[a] @ (A[a] @ x[t])), a = idx[t]; a = -1: y[t] = W x[t]."""
    out = []
    for t in range(x.shape[0]):
        a = int(idx[t])
        out.append(W @ x[t] if a < 0 else c[a] * (W @ x[t] + p[t] * (B[a] @ (A[a] @ x[t]))))
    return torch.stack(out)


def adapter_scale(c, idx):
    """c[idx[t]] per token, 1 for base tokens (idx -1)."""
    return torch.where((idx >= 0)[:, None], c[idx.clamp(min=0)], torch.ones_like(c[0]))


def gather(x, W, A, B, c, p, idx, **_):
    a, on = idx.clamp(min=0), (idx >= 0).to(x.dtype)                  # base tokens: no delta, c = 1
    h = torch.einsum("ti,tri->tr", x, A[a]) * (p * on)[:, None]        # [T, r]
    return adapter_scale(c, idx) * (x @ W.T + torch.einsum("tr,tor->to", h, B[a]))


def segments(idx):
    """(adapter, start, end) runs of a sorted idx (computed once per step in a server, not per layer)."""
    ids, counts = torch.unique_consecutive(idx, return_counts=True)
    ends = torch.cumsum(counts, 0).tolist()
    return [(int(a), e - int(n), e) for a, n, e in zip(ids.tolist(), counts.tolist(), ends)]


def grouped(x, W, A, B, c, p, idx, segs=None, **_):
    y = x @ W.T
    for a, s, e in segs if segs is not None else segments(idx):
        if a >= 0:
            y[s:e] += ((x[s:e] @ A[a].T) * p[s:e, None]) @ B[a].T
    return y * adapter_scale(c, idx)


def peft_dora(x, W, A, B, m, idx, segs=None, **_):
    """PEFT's DoRA forward per segment (scale 1): y = (m/||W + B A||) * (W x + B A x) — norm recomputed each call."""
    y = torch.empty(x.shape[0], W.shape[0], device=x.device, dtype=x.dtype)
    for a, s, e in segs if segs is not None else segments(idx):
        if a < 0:
            y[s:e] = x[s:e] @ W.T
            continue
        n = torch.linalg.vector_norm(W + B[a] @ A[a], dim=1)
        y[s:e] = (m[a] / n) * (x[s:e] @ W.T + (x[s:e] @ A[a].T) @ B[a].T)
    return y


def fused_method():
    """The Triton kernel as a method, or None without triton or CUDA (the CPU path never imports triton)."""
    if not torch.cuda.is_available():
        return None
    try:
        from bench.kernels.triton_served import segment_table, served_lora_triton
    except ImportError:
        return None

    def fused(x, W, A, B, c, p, idx, table=None, **_):
        return served_lora_triton(x @ W.T, x, A, B, c, p, idx, table=table)
    fused.segment_table = segment_table
    return fused


def check(methods, d_in=48, d_out=40, T=13, device="cpu"):
    """Every fast path equals the per-token loop (float32), on a step that has base tokens (idx -1) too."""
    inp = make_inputs(T, d_in, d_out, 3, 4, torch.float32, device, n_base=3)
    assert (inp["idx"] < 0).sum() == 3
    ref = reference(**inp)
    for name in ("gather", "grouped", "fused"):
        if name in methods:
            torch.testing.assert_close(methods[name](**inp), ref, rtol=1e-4, atol=1e-4)
    W, A, B, m, x = (inp[k] for k in ("W", "A", "B", "m", "x"))
    dora_ref = torch.stack([W @ x[t] if a < 0 else
                            (m[a] / torch.linalg.vector_norm(W + B[a] @ A[a], dim=1)) * ((W + B[a] @ A[a]) @ x[t])
                            for t, a in enumerate(inp["idx"].tolist())])
    torch.testing.assert_close(peft_dora(**inp), dora_ref, rtol=1e-4, atol=1e-4)


def timeit(fn, reps, device):
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e) / 1000)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def min_bytes(T, d_in, d_out, n_used, rank, elem):
    return elem * (d_out * d_in + n_used * (rank * d_in + d_out * rank + d_out) + T * (d_in + d_out + 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kernels.served_layer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU (when there is no GPU)")
    ap.add_argument("--tokens", default="1,16,64,256")
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--out", default=None, help="results folder (default bench/results)")
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not a.cpu_smoke
    if not cuda and not a.cpu_smoke:
        print(json.dumps({"skipped": "no CUDA device; use --cpu-smoke for a functional run"}))
        return 0
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    shapes = SHAPES_8B if cuda else {"small": (256, 512)}
    methods = {"base": base, "gather": gather, "grouped": grouped, "peft_dora": peft_dora}
    check(methods, device=device)
    fused, fused_error = (fused_method() if cuda else None), None
    if fused is not None:
        try:                               # the kernel is unverified on a GPU: a failure drops it, not the whole run
            check({"fused": fused}, device=device)
            methods["fused"] = fused
        except Exception as e:  # noqa: BLE001
            fused, fused_error = None, f"{type(e).__name__}: {e}"
            print(f"fused dropped: {fused_error}", flush=True)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in PEAK_BYTES_S.items() if k in name), None)
    rows = []
    for shape_name, (d_in, d_out) in shapes.items():
        for T in [int(t) for t in a.tokens.split(",")]:
            inp = make_inputs(T, d_in, d_out, a.adapters, a.rank, dtype, device)
            inp["segs"] = segments(inp["idx"])
            if fused is not None:
                inp["table"] = fused.segment_table(inp["idx"], a.adapters)
            t_base = None
            for mname, fn in methods.items():
                with torch.inference_mode():
                    t = timeit(lambda: fn(**inp), a.reps if cuda else 5, device)
                t_base = t if mname == "base" else t_base
                n_used = 0 if mname == "base" else min(T, a.adapters)
                bw = min_bytes(T, d_in, d_out, n_used, a.rank, inp["x"].element_size()) / t
                rows.append({"shape": shape_name, "d_in": d_in, "d_out": d_out, "tokens": T, "method": mname,
                             "seconds": t, "x_base": t / t_base, "bytes_per_s": bw,
                             "frac_peak": bw / peak if peak else None})
                print(f"{shape_name:>14} T={T:<4} {mname:<10} {t * 1e6:9.1f} us  {t / t_base:6.2f}x base"
                      + (f"  {100 * bw / peak:5.1f}% peak BW" if peak else ""), flush=True)
    out = Path(a.out or Path(__file__).resolve().parents[1] / "results")
    out.mkdir(parents=True, exist_ok=True)
    tag = "cpu-smoke" if not cuda else name.replace(" ", "_")
    summary = {"device": name, "dtype": str(dtype), "adapters": a.adapters, "rank": a.rank, "peak_bytes_s": peak,
               "fused_error": fused_error,
               "rows": rows, "decode_max_x_base": {m: max(r["x_base"] for r in rows if r["method"] == m)
                                                   for m in methods}}
    (out / f"kernels_{tag}.json").write_text(json.dumps(summary, indent=1) + "\n")
    _plot(rows, out / f"kernels_{tag}.png", name)
    print(json.dumps({"device": name, "file": str(out / f"kernels_{tag}.json"), **summary["decode_max_x_base"]}))
    return 0


def _plot(rows, path, title):
    from bench.load.plots import _plt
    plt = _plt()
    shapes = sorted({r["shape"] for r in rows})
    fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 4), squeeze=False)
    for ax, s in zip(axes[0], shapes):
        for m in sorted({r["method"] for r in rows} - {"base"}):
            pts = [(r["tokens"], r["x_base"]) for r in rows if r["shape"] == s and r["method"] == m]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        ax.axhline(1.15, ls="--", c="gray", lw=1, label="target 1.15x")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens in the step")
        ax.set_ylabel("time / base GEMM")
        ax.set_title(s)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
