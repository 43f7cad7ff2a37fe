"""`python -m bench.method.bf16_agreement`: how often hylorada-serve's engine in bfloat16 gives the same greedy
tokens as the float32 served-form reference, on the real base and the real (trained) demo adapters.

    python -m bench.method.bf16_agreement [--prompts 16] [--new 32] [--out bench/results/bf16_agreement]

Base: SmolLM2-135M-Instruct (hylorada.bases, fetched once), adapters: the committed demo adapters
(hylorada_serve/demo_adapters: PEFT LoRA, converted DoRA, HyLoRADA with position bias), questions: demo_build's
held-out chat questions. One vLLM engine with the HyLoRADA plugin in --dtype (default bfloat16) generates greedily
for the base and every adapter in one mixed batch; hylorada.reference.served.ServedReference in float32 is the
truth. Reported per model: the share of answers identical for all --new tokens, the mean number of leading
tokens that agree, and the share of positions that agree before the first divergence (after it the two continue
different texts, so later positions are not comparable). Writes OUT.json and OUT.png (agreeing prefix per answer).
Run with --dtype float32 for the control: every answer should agree in full (tests/patches/real_model checks it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch


def agreeing_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def summarize(prefixes: list[int], new: int) -> dict:
    return {"answers": len(prefixes), "identical": sum(p == new for p in prefixes) / len(prefixes),
            "mean_agreeing_prefix": sum(prefixes) / len(prefixes), "agreeing_prefix": prefixes}


def plot(results: dict, new: int, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, r in results.items():
        xs = sorted(r["agreeing_prefix"])
        ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=f"{name} ({r['identical']:.0%} identical)")
    ax.set_xlabel(f"leading greedy tokens equal to the float32 reference (of {new})")
    ax.set_ylabel("share of answers (CDF)")
    ax.set_xlim(0, new)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.method.bf16_agreement", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16, help="held-out questions per model")
    ap.add_argument("--new", type=int, default=32, help="greedy tokens per answer")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="the engine's dtype")
    ap.add_argument("--out", default="bench/results/bf16_agreement", help="result path without extension")
    a = ap.parse_args(argv)
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    from transformers import AutoConfig, AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from hylorada.bases import ensure_base
    from hylorada.format.load import load_served
    from hylorada.reference.served import ServedReference
    from hylorada_serve.demo_build import DEFAULT_OUT, STYLES, prompts

    base = ensure_base("smollm2-135m-instruct", dtype="float32")
    tok, cfg = AutoTokenizer.from_pretrained(base), AutoConfig.from_pretrained(base)
    names = [None, *STYLES]
    folders = {n: DEFAULT_OUT / n for n in STYLES}
    served = {n: load_served(folders[n], base_config=cfg) for n in STYLES}
    rank = max(int(json.loads((folders[n] / "adapter_config.json").read_text())["r"]) for n in STYLES)
    qs = prompts(48 + a.prompts, 0)[48:]              # demo_build's held-out split (its first 48 train the adapters)
    ids = [tok(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False),
               add_special_tokens=False)["input_ids"] for q in qs]
    jobs = [(n, p) for n in names for p in ids]
    t0 = time.time()
    llm = LLM(model=str(base), enable_lora=True, max_loras=len(STYLES), max_lora_rank=rank, max_cpu_loras=len(STYLES),
              dtype=a.dtype, max_model_len=512, max_num_seqs=16, kv_cache_memory_bytes=512 << 20, seed=0,
              enforce_eager=True)
    reqs = [None if n is None else LoRARequest(n, 1 + STYLES.index(n), str(folders[n])) for n, _ in jobs]
    sp = SamplingParams(temperature=0, max_tokens=a.new, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for _, p in jobs], sp, lora_request=reqs, use_tqdm=True)
    got = [list(o.outputs[0].token_ids) for o in outs]
    engine_s = time.time() - t0
    ref = ServedReference(base, dtype=torch.float32)
    want = []
    for k, (n, p) in enumerate(jobs):
        want.append(ref.greedy([p], [None if n is None else served[n]], a.new, top_logprobs=1)[0][0])
        print(f"reference {k + 1}/{len(jobs)}", end="\r", flush=True)
    print()
    results = {}
    for n in names:
        pre = [agreeing_prefix(g, w) for (m, _), g, w in zip(jobs, got, want) if m == n]
        results[n or "base"] = summarize(pre, a.new)
    allp = [p for r in results.values() for p in r["agreeing_prefix"]]
    out = {"bench": "bf16_agreement", "engine_dtype": a.dtype, "reference_dtype": "float32", "base": str(base),
           "adapters": {n: str(f) for n, f in folders.items()}, "questions": qs, "new_tokens": a.new,
           "models": results, "overall": summarize(allp, a.new), "engine_s": round(engine_s, 1),
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
           "command": " ".join(["python -m bench.method.bf16_agreement", *(sys.argv[1:] if argv is None else argv)])}
    path = Path(a.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    plot(results, a.new, path.with_suffix(".png"),
         f"vLLM + HyLoRADA plugin in {a.dtype} vs the float32 reference\nSmolLM2-135M-Instruct, demo adapters, greedy")
    summary = {n: {"identical": round(r["identical"], 3), "mean_agreeing_prefix": round(r["mean_agreeing_prefix"], 1)}
               for n, r in results.items()}
    print(json.dumps({"out": str(path.with_suffix(".json")), "dtype": a.dtype, "overall_identical":
                      round(out["overall"]["identical"], 3), "models": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
