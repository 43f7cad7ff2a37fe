"""What vLLM's CPU linear layers keep per distinct token count: oneDNN's primitive cache, offline.

    python -m bench.soak.onednn_cache [--tokens 400] [--caps 1024,128,32]

vLLM 0.32's CPU backend runs each unquantized linear layer as a oneDNN matmul (`ops.create_onednn_mm`, 32 token
counts cached per layer). oneDNN compiles one primitive per (weight shape, M = tokens in the step) and also keeps
it in its process-wide cache (ONEDNN_PRIMITIVE_CACHE_CAPACITY, 1,024 by default). This runs the five GEMM shapes of
the soak's tiny Llama for M = 1..--tokens, each cap in a fresh process (the variable is read once per process), and
reports RSS and glibc malloc's in-use / free bytes. Writes bench/results/soak_onednn_cache.json; last line JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHAPES = [(128, 256), (128, 128), (128, 512), (256, 128), (128, 512)]   # [K, N]: qkv, o, gate_up, down, lm_head


def child(tokens: int) -> dict:
    import ctypes
    import time

    import torch
    from vllm import _custom_ops as ops

    libc = ctypes.CDLL("libc.so.6")

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = MallInfo2

    def mem() -> dict:
        m = libc.mallinfo2()
        rss = int(next(x for x in open("/proc/self/status") if x.startswith("VmRSS")).split()[1])
        return {"rss_mb": rss >> 10, "malloc_in_use_mb": (m.uordblks + m.hblkhd) >> 20, "malloc_free_mb": m.fordblks >> 20}

    torch.manual_seed(0)
    handlers = [ops.create_onednn_mm(torch.randn(n, k).t(), 32) for k, n in SHAPES]
    out = {"start": mem(), "steps": []}
    t0 = time.time()
    for m in range(1, tokens + 1):
        for (k, _), h in zip(SHAPES, handlers):
            ops.onednn_mm(h, torch.randn(m, k), None)
        if m % 100 == 0 or m == tokens:
            out["steps"].append({"distinct_m": m, **mem(), "seconds": round(time.time() - t0, 1)})
    for m in range(1, 65):                  # token counts seen before: no new growth expected
        for (k, _), h in zip(SHAPES, handlers):
            ops.onednn_mm(h, torch.randn(m, k), None)
    out["after_repeats"] = mem()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=400)
    p.add_argument("--caps", default="1024,128,32")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak_onednn_cache.json"))
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.tokens)))
        return 0
    runs = {}
    for cap in a.caps.split(","):
        env = {**os.environ, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": cap, "VLLM_HOST_IP": "127.0.0.1"}
        r = subprocess.run([sys.executable, __file__, "--child", "--tokens", str(a.tokens)], env=env, timeout=600,
                           capture_output=True, text=True, check=True)
        runs[cap] = json.loads(r.stdout.strip().splitlines()[-1])
        s, e = runs[cap]["start"], runs[cap]["after_repeats"]
        print(f"cap {cap}: RSS {s['rss_mb']} -> {e['rss_mb']} MiB, malloc in use {s['malloc_in_use_mb']} -> "
              f"{e['malloc_in_use_mb']}, free {s['malloc_free_mb']} -> {e['malloc_free_mb']}", flush=True)
    out = {"bench": "onednn_cache", "shapes_k_n": SHAPES, "tokens": a.tokens, "runs": runs,
           "command": " ".join(["python -m bench.soak.onednn_cache", *(argv or sys.argv[1:])])}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({cap: {"rss_growth_mb": r["after_repeats"]["rss_mb"] - r["start"]["rss_mb"]} for cap, r in runs.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
