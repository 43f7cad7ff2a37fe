"""`python -m bench.method.profile_step`: where the engine's time goes with HyLoRADA adapters, plain-LoRA twins and
the base alone — one in-process vLLM engine with the HyLoRADA plugin, torch.profiler around one `generate` each.

    python -m bench.method.profile_step [--base smollm2-135m-instruct] [--dtype bfloat16] [--adapters 8]
                                        [--requests 16] [--prompt 48] [--new 48] [--out bench/results/profile_step]

The adapters are bench.compare's (r16 on all seven projections, on --base). Our code is labelled from outside (the
module functions it calls are wrapped in torch.profiler.record_function here; nothing in the product changes):

    hy.plan        HyState.begin_step: slots, token groups and p(pos) for the step (once per step)
    hy.lora        the LoRA delta of every patched layer (grouped_cpu.grouped_lora_ / small_delta_)
    hy.c_scale     c ⊙ (…) of the DoRA magnitude (grouped_cpu.scale_tokens_)

and the rest is vLLM's (base matmuls, attention, sampling, scheduling). "base-rows": the same requests with no
adapter in the same LoRA-enabled engine (vLLM base-only, LoRA off, is bench.compare's vllm-base). Reported per case: wall seconds and output
tokens/s of a generate without the profiler (after a warm-up one), then, from a profiled one, milliseconds in each
label, their share of that run's wall time, and the top aten ops by self CPU time.
Runs the engine in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so the profiler sees the model's forward.
Writes OUT.json and OUT.png (stacked bars of the wall time by part).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

LABELS = ("hy.plan", "hy.lora", "hy.c_scale")


def label(fn, name: str):
    import torch

    @functools.wraps(fn)
    def wrapped(*a, **kw):
        with torch.profiler.record_function(name):
            return fn(*a, **kw)
    return wrapped


def install_labels() -> None:
    from hylorada_patches import grouped_cpu, state
    grouped_cpu.grouped_lora_ = label(grouped_cpu.grouped_lora_, "hy.lora")
    grouped_cpu.small_delta_ = label(grouped_cpu.small_delta_, "hy.lora")
    grouped_cpu.scale_tokens_ = label(grouped_cpu.scale_tokens_, "hy.c_scale")
    state.HyState.begin_step = label(state.HyState.begin_step, "hy.plan")


def profile_case(llm, prompts, reqs, new: int) -> dict:
    from torch.profiler import ProfilerActivity, profile
    from vllm import SamplingParams
    sp = SamplingParams(temperature=0, max_tokens=new, ignore_eos=True)
    llm.generate([{"prompt_token_ids": p} for p in prompts], sp, lora_request=reqs, use_tqdm=False)   # warm-up
    t0 = time.perf_counter()          # the speed, without the profiler (it costs per op, and our path has more ops)
    llm.generate([{"prompt_token_ids": p} for p in prompts], sp, lora_request=reqs, use_tqdm=False)
    wall = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        llm.generate([{"prompt_token_ids": p} for p in prompts], sp, lora_request=reqs, use_tqdm=False)
        profiled = time.perf_counter() - t0
    avg = prof.key_averages()
    by = {e.key: e for e in avg}
    parts = {k: by[k].cpu_time_total / 1e3 if k in by else 0.0 for k in LABELS}
    top = sorted((e for e in avg if "::" in e.key), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return {"wall_s": wall, "output_tok_per_s": len(prompts) * new / wall, "profiled_wall_s": profiled, "ms": parts,
            "share_of_wall": {k: v / 1e3 / profiled for k, v in parts.items()},
            "top_self_cpu_ms": {e.key: round(e.self_cpu_time_total / 1e3, 1) for e in top}}


def plot(cases: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(cases)
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = [0.0] * len(names)
    for k in (*LABELS, "rest (vLLM)"):
        vals = [(c["ms"][k] / 1e3 if k in c["ms"] else c.get("profiled_wall_s", c["wall_s"]) - sum(c["ms"].values()) / 1e3)
                for c in cases.values()]
        ax.bar(names, vals, bottom=bottom, label=k)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("seconds of one profiled generate")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.method.profile_step", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="smollm2-135m-instruct", help="as bench.compare --base")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=48)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--out", default="bench/results/profile_step")
    a = ap.parse_args(argv)
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import torch
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    from bench.compare import adapters as build
    base, cache = build.resolve_base(a.base)
    hyl = build.build_hylorada(base, a.adapters, cache)
    lora = build.build_served_lora(base, build.build_peft(base, a.adapters, cache), cache)
    install_labels()
    llm = LLM(model=str(base), enable_lora=True, max_loras=a.adapters, max_lora_rank=16, max_cpu_loras=2 * a.adapters,
              dtype=a.dtype, max_model_len=512, max_num_seqs=16, kv_cache_memory_bytes=1 << 30, seed=0,
              enforce_eager=True)
    g = torch.Generator().manual_seed(0)
    from transformers import AutoConfig
    top = min(2000, AutoConfig.from_pretrained(base).vocab_size)       # the tiny bases' vocabularies are smaller
    prompts = [torch.randint(3, top, (a.prompt,), generator=g).tolist() for _ in range(a.requests)]
    cases = {}
    for name, folders, first_id in (("hylorada", hyl, 1), ("plain-lora", lora, 1 + a.adapters), ("base-rows", [], 0)):
        reqs = [LoRARequest(f"{name}-{i % len(folders)}", first_id + i % len(folders), str(folders[i % len(folders)]))
                if folders else None for i in range(a.requests)]
        cases[name] = profile_case(llm, prompts, reqs, a.new)
        c = cases[name]
        print(f"[{name}] {c['wall_s']:.2f} s, {c['output_tok_per_s']:.1f} tok/s; "
              + ", ".join(f"{k} {v * 100:.1f}%" for k, v in c["share_of_wall"].items()), flush=True)
    h, p_, b = (cases[k]["wall_s"] for k in ("hylorada", "plain-lora", "base-rows"))
    out = {"bench": "profile_step", "base": str(base), "dtype": a.dtype, "adapters": a.adapters, "requests": a.requests,
           "prompt": a.prompt, "new": a.new, "cases": cases,
           "ratios": {"hylorada_over_plain_lora_tok_s": p_ / h, "hylorada_over_base_tok_s": b / h,
                      "plain_lora_over_base_tok_s": b / p_},
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
           "command": " ".join(["python -m bench.method.profile_step", *(sys.argv[1:] if argv is None else argv)])}
    path = Path(a.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    plot(cases, path.with_suffix(".png"), f"one generate: {a.requests} requests x {a.prompt}+{a.new} tokens, "
         f"{a.adapters} adapters r16 x 7 projections, {a.dtype}, {Path(str(base)).name}")
    print(json.dumps({"out": str(path.with_suffix(".json")), **{k: round(v, 3) for k, v in out["ratios"].items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
