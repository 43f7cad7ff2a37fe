"""The first GPU check of the static served path (patches/static_path.py, docs/gpu.md) — prepared, NOT yet run on a GPU.

    python -m bench.kernels.gpu_check            # CUDA: the three checks below; writes bench/results/gpu/gpu_check.json
    python -m bench.kernels.gpu_check --dry      # CPU: the compile check only (aot_eager), nothing written

On the GPU (the accelerator machine has torch + triton, no vLLM — none is needed: the static path imports none):
  1. graphs:  for every capture size T = 1..64, capture the static stack (bench/kernels/static_stack.py) in a CUDA
              graph, then --replays times: rewrite the mapping (n <= T tokens, base and padding included), positions,
              one slot's A/B/c/w_pos/position bias in place, replay, compare with eager on the same inputs;
  2. compile: torch.compile(fullgraph=True, dynamic=False, every guard dropped — vLLM's policy) with inductor, traced
              on a base-only step, then captured in a CUDA graph at T = 1, 8, 64 and replayed the same way;
  3. syncs:   set_mapping + step_inputs + the forward under torch.cuda.set_sync_debug_mode("error").
Every comparison is max |graph - eager| in float32 (tolerance 1e-4). Last line: a JSON object (ok, worst error per
check, what ran). Exit 1 when a check fails.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-4
RESULT = ROOT / "bench" / "results" / "gpu" / "gpu_check.json"


def _import_patches() -> None:
    """hylorada_patches without an install (the accelerator machine has the tree, not the package)."""
    try:
        import hylorada_patches  # noqa: F401
    except ImportError:
        spec = importlib.util.spec_from_file_location("hylorada_patches", ROOT / "patches" / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / "patches")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["hylorada_patches"] = module
        spec.loader.exec_module(module)


def compile_like_vllm(fn, backend: str):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, dynamic=False, backend=backend,
                         options={"guard_filter_fn": torch.compiler.skip_all_guards_unsafe})


def graph_of(fn, x_static):
    """fn(x_static) captured in a CUDA graph (warm-up on a side stream first, as torch.cuda.graphs asks)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn(x_static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = fn(x_static)
    return graph, y_static


def replay_check(stack, fn, T: int, replays: int, g) -> float:
    """Worst |replay - eager| over `replays` in-place rewrites at capture size T."""
    x_static = torch.zeros(T, stack.layers[0].W.shape[1], device="cuda")
    graph, y_static = graph_of(fn, x_static)
    worst = 0.0
    for _ in range(replays):
        x = stack.rewrite(g, max_n=T)[:T]
        x_static.copy_(x)
        graph.replay()
        torch.cuda.synchronize()
        with torch.no_grad():
            worst = max(worst, float((y_static - stack.forward(x)).abs().max()))
    return worst


def check_graphs(replays: int, sizes) -> dict:
    from bench.kernels.static_stack import Stack
    stack, g = Stack.build("cuda", seed=0, capacity=max(sizes)), torch.Generator().manual_seed(1)
    with torch.no_grad():
        return {T: replay_check(stack, stack.forward, T, replays, g) for T in sizes}


def check_compile(backend: str, replays: int, sizes, device: str) -> dict:
    """One compiled stack per size T (capacity T: with guards dropped a graph serves one shape, so vLLM pads to it)."""
    from bench.kernels.static_stack import Stack, max_diffs
    out = {}
    for T in sizes:
        stack, g = Stack.build(device, seed=2, capacity=T), torch.Generator().manual_seed(3)
        compiled = compile_like_vllm(stack.forward, backend)
        with torch.no_grad():
            compiled(stack.rewrite(g, base_only=True))               # the trace sees a base-only (profile-like) batch
        if device != "cuda":
            steps = [lambda: stack.rewrite(g) for _ in range(replays)]
            out[T] = max(max_diffs(compiled, stack.forward, steps))
        else:
            with torch.no_grad():
                out[T] = replay_check(stack, compiled, T, replays, g)
    return out


def check_syncs() -> dict:
    from bench.kernels.static_stack import S, Stack
    from hylorada_patches.static_path import step_inputs
    stack = Stack.build("cuda", seed=4, capacity=64)
    slots = torch.randint(-1, S, (40,), device="cuda")
    positions = torch.randint(0, 5000, (40,), device="cuda")
    x = torch.randn(64, stack.layers[0].W.shape[1], device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            stack.tables.set_mapping(slots, positions)
            step_inputs(stack.tables)
            stack.forward(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return {"sync_free": True}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry", action="store_true", help="CPU: the compile check only (aot_eager); nothing written")
    ap.add_argument("--replays", type=int, default=20)
    args = ap.parse_args(argv)
    _import_patches()
    result: dict = {"device": "cpu (dry)" if args.dry else torch.cuda.get_device_name(0), "torch": torch.__version__}
    if args.dry:
        result["compile"] = check_compile("aot_eager", min(args.replays, 6), (1, 16), "cpu")
        worst = max(result["compile"].values())
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --dry on a CPU", file=sys.stderr)
            return 2
        result["graphs"] = check_graphs(args.replays, range(1, 65))
        result["compile"] = check_compile("inductor", args.replays, (1, 8, 64), "cuda")
        result["syncs"] = check_syncs()
        worst = max(max(result["graphs"].values()), max(result["compile"].values()))
    result["worst"], result["ok"] = worst, worst < TOL
    if not args.dry:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result, default=str))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
