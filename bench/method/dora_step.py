"""Training speed at the DoRA corner (issue 23, item 3): a HyLoRADA training step vs PEFT DoRA's, same model, same
init, same batches, and the per-step losses compared.

    python -m bench.method.dora_step [--base smollm2-135m-instruct] [--seq 256] [--batch 1] [--steps 6] [--rank 16]

Methods, each in a process of its own (peak RSS is per process):
  peft-dora      PEFT LoRA with use_dora=True, use_rslora=True (it forms W + sBA for the norm every step)
  hylorada-dora  HyLoRADA at the DoRA corner: gate g = 1, beta = 0 (frozen), no position bias; A copied from
                 PEFT's init (B = 0, m = ||W|| in both), so the two are the same model; the norm from
                 functional.weight_norm (W A^T and [r, r] products, W + sBA never formed)
  peft-lora      PEFT rsLoRA, the same rank: what the magnitude costs
AdamW (lr --lr, no weight decay), float32, random token batches from one seed, loss = next-token cross-entropy.
Timing: wall time of steps 2..N (step 1 warms up); --reps rounds of all methods, the order reversed every other
round (a busy neighbour hits all alike), each method's best round kept. Writes bench/results/dora_step.json; the
last line printed is the JSON summary (hylorada-dora / peft-dora speed, max |loss difference| over the steps).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.compare.adapters import PROJECTIONS, resolve_base

RESULTS = Path(__file__).resolve().parents[1] / "results"
METHODS = ("peft-dora", "hylorada-dora", "peft-lora")
GATE = 30.0                 # sigmoid(30) = 1 and sigmoid(-30) ~ 1e-13 in float32: the DoRA corner


def peft_model(base: Path, rank: int, alpha: float, dora: bool):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, use_dora=dora,
                                            use_rslora=True, target_modules=list(PROJECTIONS)))


def hylorada_model(base: Path, rank: int, alpha: float):
    """The DoRA corner, with PEFT DoRA's own initial A (so both runs start from one model)."""
    import torch
    from hylorada import HyLoRADAConfig, HyLoRADAModel
    ref = peft_model(base, rank, alpha, dora=True)
    init = {n.replace("base_model.model.", "").replace(".lora_A.default.weight", ""): p.detach().clone()
            for n, p in ref.named_parameters() if ".lora_A." in n}
    del ref
    cfg = HyLoRADAConfig(lora_rank=rank, lora_alpha=alpha, position_bias_enabled=False, magnitude_gate_init=GATE,
                         residual_weight_init=-GATE, target_modules=PROJECTIONS)
    model = HyLoRADAModel.from_pretrained(base, cfg, dtype=torch.float32)
    with torch.no_grad():
        for n, p in model.base.named_parameters():
            if n.endswith(".hylorada.lora_A"):
                p.copy_(init[n[: -len(".hylorada.lora_A")]])
            if n.endswith((".magnitude_gate", ".residual_weight", ".position_scale")):
                p.requires_grad_(False)
    assert sum(n.endswith(".hylorada.lora_A") for n, _ in model.base.named_parameters()) == len(init)
    return model


def run_one(method: str, a) -> dict:
    import torch
    torch.manual_seed(0)
    base, _ = resolve_base(a.base)
    model = (hylorada_model(base, a.rank, a.alpha) if method == "hylorada-dora"
             else peft_model(base, a.rank, a.alpha, dora=method == "peft-dora"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    vocab = int((model.base.config if method == "hylorada-dora" else model.config).vocab_size)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(3, vocab, (a.batch, a.seq), generator=g) for _ in range(a.steps)]
    losses, times = [], []
    for ids in batches:
        t = time.perf_counter()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        losses.append(float(out.loss))
    timed = sum(times[1:])
    return {"method": method, "losses": losses, "step_s": round(timed / max(1, len(times) - 1), 4),
            "tokens_per_s": round(a.batch * a.seq * (len(times) - 1) / timed, 1),
            "trainable": sum(p.numel() for p in params),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="smollm2-135m-instruct", help="tiny-small, a known base, or a model folder")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--reps", type=int, default=2, help="rounds of all methods (best kept)")
    ap.add_argument("--only", default=None, help=argparse.SUPPRESS)         # child process: one method, JSON out
    ap.add_argument("--out", default=str(RESULTS / "dora_step.json"))
    a = ap.parse_args(argv)
    if a.only:
        print(json.dumps(run_one(a.only, a)))
        return 0
    results, rounds = {}, []
    methods = a.methods.split(",")
    for rep in range(a.reps):
        for m in (methods if rep % 2 == 0 else methods[::-1]):
            argv_child = [sys.executable, "-m", "bench.method.dora_step", "--only", m, "--base", a.base, "--seq",
                          str(a.seq), "--batch", str(a.batch), "--steps", str(a.steps), "--rank", str(a.rank),
                          "--alpha", str(a.alpha), "--lr", str(a.lr)]
            done = subprocess.run(argv_child, capture_output=True, text=True, check=True, env=os.environ.copy())
            got = json.loads(done.stdout.strip().splitlines()[-1])
            rounds.append({"round": rep, **{k: v for k, v in got.items() if k != "losses"}})
            if m not in results or got["tokens_per_s"] > results[m]["tokens_per_s"]:
                results[m] = got
            print(rep, m, {k: v for k, v in got.items() if k != "losses"}, flush=True)
    summary = {"bench": "dora_step", "base": a.base, "seq": a.seq, "batch": a.batch, "steps": a.steps, "rank": a.rank,
               "alpha": a.alpha, "lr": a.lr, "dtype": "float32", "threads": os.cpu_count(), "reps": a.reps,
               "results": results, "rounds": rounds}
    if {"peft-dora", "hylorada-dora"} <= set(results):
        h, p = results["hylorada-dora"], results["peft-dora"]
        summary["speed_hylorada_over_peft_dora"] = round(h["tokens_per_s"] / p["tokens_per_s"], 3)
        summary["max_loss_diff"] = max(abs(x - y) for x, y in zip(h["losses"], p["losses"]))
        summary["goal"] = ">= 1.5x PEFT DoRA at identical loss curves (issue 23, item 3)"
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary.get(k) for k in ("bench", "speed_hylorada_over_peft_dora", "max_loss_diff")}
                     | {"json": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
