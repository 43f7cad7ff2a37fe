"""Does HyLoRADA train better long-context adapters? (issue 23, item 1) One seeded command, a table, plots.

    python -m bench.longctx [--base smollm2-135m-instruct] [--methods all] [--seeds 0,1] [--train-len 256]
                            [--eval-lens 512] [--steps 24] [--batch 2] [--lr 1e-3] [--rank 8] [--eval-n 4]

For every seed and method (bench.longctx.methods: PEFT LoRA / rsLoRA / DoRA, LongLoRA-style, HyLoRADA variants, all
at rank --rank on the seven projections), the same training: --steps AdamW steps (no weight decay, clipping at 1.0,
hylorada.train.loop.lr_at's schedule) on batches alternating passkey and 4-key needle examples of --train-len tokens
with the answer at a random depth (bench.longctx.tasks; loss on the answer digits only). Then, on the same held-out
examples for every method and seed: passkey and needle accuracy (all answer digits right, teacher-forced) at depths
0-100 % for each --eval-lens, and perplexity on held-out long text (bench/README.md, never trained on) at the longest
length. "base" is the untrained model on the same examples.

Lengths: this machine has 2 cores; a SmolLM2-135M training step at 2 x 256 tokens takes ~1.5 s and scoring 2 tasks x
5 depths x 4 examples at 512 tokens ~45 s, so the default table (9 methods x 2 seeds and the base) takes ~30 min;
--eval-lens 256,512 --eval-n 8 doubles the scoring per length (measured: 3 min for the base alone). They are far inside SmolLM2's
8,192 positions: this measures learning the retrieval format and where in the context it fails (lost in the middle),
not context extension; the GPU issue's script is the place for 4x beyond the native context.

GPU (issue 23 item 4; prepared, NOT yet run on a GPU - none was lent): LongLoRA's setting, the context extended 4x
beyond SmolLM2's native 8,192 by linear RoPE scaling, trained at 16k, passkey and needle up to 32k, inside the
device's ~8 minutes (--budget-s stops starting methods at 7 minutes):

    python -m bench.longctx --base BASE_DIR --device cuda --bf16 --rope linear:4 --train-len 16384 \
        --eval-lens 8192,16384,32768 --steps 40 --batch 1 --lr 2e-4 --seeds 0 --eval-n 2 --budget-s 420 \
        --methods 'LoRA,LongLoRA-style,HyLoRADA (blend),HyLoRADA + position scale' --out bench/results/longctx-gpu

BASE_DIR: SmolLM2-135M-Instruct as a float32 folder (hylorada.bases.ensure_base; ~540 MB, so it must be placed on
the device machine: it cannot fetch, and what a run carries is limited to 64 MiB). The same command with
--device cpu, the tiny base and small lengths is what tests/bench/longctx/test_main.py runs here.

Writes bench/results/longctx/{results.json, table.md, depth.png, curves.png}; the last line printed is the JSON path.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.longctx.methods import METHODS, base_model, build
from bench.longctx.tasks import DEPTHS, Needle, device_of, perplexity, score
from bench.method.passkey import Passkey

RESULTS = Path(__file__).resolve().parents[1] / "results" / "longctx"
HELD_OUT = Path(__file__).resolve().parents[1] / "README.md"
EVAL_SEED = 1000              # the held-out examples: the same for every method and seed


def train(model, params, tasks, T: int, steps: int, batch: int, lr: float) -> list[float]:
    from hylorada.train.loop import lr_at
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, lr, steps)
        ids, labels = tasks[step % len(tasks)].batch(batch, T)
        dev = device_of(model)
        loss = model(input_ids=ids.to(dev), labels=labels.to(dev)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(round(loss.item(), 5))
    model.eval()
    return losses


def evaluate(model, evals, lens, blocks) -> dict:
    return {"passkey": {str(T): score(model, evals[0], T, evals[2]) for T in lens},
            "needle": {str(T): score(model, evals[1], T, evals[2]) for T in lens},
            "perplexity": perplexity(model, blocks)}


def mean_acc(by_depth: dict) -> float:
    return statistics.mean(v["acc"] for v in by_depth.values())


def table(rows: dict, lens: list[int]) -> str:
    """Markdown: per method, mean accuracy over depths (mean and min-max over seeds) per task and length, ppl."""
    head = ["method", "trainable"] + [f"{t} @{T}" for t in ("passkey", "needle") for T in lens] + ["ppl", "s/step"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in rows.items():
        cells = [name, f"{runs[0]['trainable']:,}"]
        for task in ("passkey", "needle"):
            for T in lens:
                accs = [mean_acc(r["eval"][task][str(T)]) for r in runs]
                cells.append(f"{statistics.mean(accs):.2f}" + (f" ({min(accs):.2f}-{max(accs):.2f})" if len(accs) > 1 else ""))
        ppl = [r["eval"]["perplexity"] for r in runs]
        cells.append(f"{statistics.mean(ppl):.2f}")
        cells.append(f"{statistics.mean(r['seconds_per_step'] for r in runs):.2f}" if runs[0]["seconds_per_step"] else "-")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def depth_table(rows: dict, task: str, T: int) -> str:
    head = ["method"] + [f"{int(d * 100)} %" for d in DEPTHS]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in rows.items():
        cells = [name] + [f"{statistics.mean(r['eval'][task][str(T)][f'{d:.2f}']['acc'] for r in runs):.2f}" for d in DEPTHS]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def plots(rows: dict, lens: list[int], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    T = lens[-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, task in zip(axes, ("passkey", "needle")):
        for i, (name, runs) in enumerate(rows.items()):
            ys = [statistics.mean(r["eval"][task][str(T)][f"{d:.2f}"]["acc"] for r in runs) for d in DEPTHS]
            ax.plot([100 * d for d in DEPTHS], ys, marker="o", label=name, color=f"C{i % 10}",
                    linestyle="-" if i < 10 else "--")
        ax.set_title(f"{task} accuracy by depth at {T} tokens (mean over seeds)")
        ax.set_xlabel("answer depth (%)")
        ax.set_ylim(-0.05, 1.05)
    axes[0].set_ylabel("all digits right")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "depth.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, runs) in enumerate(rows.items()):
        if runs[0]["losses"]:
            ax.plot(range(1, len(runs[0]["losses"]) + 1), runs[0]["losses"], label=name, color=f"C{i % 10}")
    ax.set_xlabel("step")
    ax.set_ylabel("answer loss (first seed)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="smollm2-135m-instruct")
    p.add_argument("--methods", default="all", help=f"comma-separated, or all: {', '.join(METHODS)}")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--train-len", type=int, default=256)
    p.add_argument("--eval-lens", default="512")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--eval-n", type=int, default=4, help="held-out examples per task, length and depth")
    p.add_argument("--rope", help="scale RoPE for every method and the base, TYPE:FACTOR (linear:4, dynamic:4, "
                   "yarn:4): max_position_embeddings x FACTOR, the context-extension setting (default: none)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the GPU setting: see GPU in this docstring)")
    p.add_argument("--bf16", action="store_true", help="forward passes under bfloat16 autocast (weights and "
                   "optimizer state stay float32)")
    p.add_argument("--budget-s", type=float, help="start no further method once this many seconds have passed "
                   "(those left are listed as skipped); for a device with a time limit")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    rope = None
    if a.rope:
        kind, _, factor = a.rope.partition(":")
        try:
            rope = (kind, float(factor))
        except ValueError:
            p.error(f"--rope: TYPE:FACTOR, e.g. linear:4 (got {a.rope!r})")
    auto = torch.autocast(device_type=a.device.split(":")[0], dtype=torch.bfloat16, enabled=a.bf16)
    from transformers import AutoTokenizer

    from bench.compare.adapters import resolve_base
    from hylorada.train.data import token_blocks
    base = resolve_base(a.base)[0]
    methods = list(METHODS) if a.methods == "all" else a.methods.split(",")
    lens = [int(x) for x in a.eval_lens.split(",")]
    tok = AutoTokenizer.from_pretrained(base)
    evals = (Passkey(tok, EVAL_SEED), Needle(tok, EVAL_SEED), a.eval_n)
    blocks = token_blocks([HELD_OUT.read_text()], tok, lens[-1])[:4]
    t_start = time.perf_counter()
    rows: dict[str, list[dict]] = {"base (no training)": []}
    skipped: list[str] = []
    model = base_model(base, rope).to(a.device).eval()
    with auto:
        rows["base (no training)"].append({"seed": None, "trainable": 0, "losses": [], "seconds_per_step": 0.0,
                                           "eval": evaluate(model, evals, lens, blocks)})
    del model
    print(f"base: passkey {mean_acc(rows['base (no training)'][0]['eval']['passkey'][str(lens[-1])]):.2f} "
          f"needle {mean_acc(rows['base (no training)'][0]['eval']['needle'][str(lens[-1])]):.2f} at {lens[-1]}", flush=True)
    for seed in map(int, a.seeds.split(",")):
        for name in methods:
            if a.budget_s is not None and time.perf_counter() - t_start > a.budget_s:
                skipped.append(f"seed {seed} {name}")
                continue
            t0 = time.perf_counter()
            model, params = build(name, base, a.rank, seed, rope)
            model.to(a.device)
            tasks = (Passkey(tok, seed), Needle(tok, seed))
            with auto:
                losses = train(model, params, tasks, a.train_len, a.steps, a.batch, a.lr)
                per_step = (time.perf_counter() - t0) / max(1, a.steps)
                ev = evaluate(model, evals, lens, blocks)
            rows.setdefault(name, []).append({"seed": seed, "trainable": sum(q.numel() for q in params),
                                              "losses": losses, "seconds_per_step": round(per_step, 3), "eval": ev})
            print(f"seed {seed} {name}: passkey {mean_acc(ev['passkey'][str(lens[-1])]):.2f} needle "
                  f"{mean_acc(ev['needle'][str(lens[-1])]):.2f} at {lens[-1]}, ppl {ev['perplexity']:.2f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            del model, params
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.longctx " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    doc = {"command": command.strip(), "base": a.base, "train_len": a.train_len, "eval_lens": lens, "steps": a.steps,
           "batch": a.batch, "lr": a.lr, "rank": a.rank, "eval_n": a.eval_n, "depths": list(DEPTHS),
           "rope": a.rope, "device": a.device, "bf16": a.bf16, "skipped": skipped,
           "seconds": round(time.perf_counter() - t_start, 1), "rows": rows}
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = [f"# Long-context adapters on {a.base}", "", f"`{doc['command']}` ({doc['seconds'] / 60:.0f} min)", "",
          f"Training: {a.steps} steps of {a.batch} x {a.train_len} tokens (passkey and 4-key needle alternating), rank "
          f"{a.rank}, lr {a.lr}. Accuracy: all answer digits right (teacher-forced), mean over depths "
          f"{', '.join(f'{int(d * 100)} %' for d in DEPTHS)}, {a.eval_n} examples each; mean (min-max) over seeds "
          f"{a.seeds}. Perplexity: held-out text at {lens[-1]} tokens. RoPE: {a.rope or 'as the base'}; "
          f"{a.device}{', bfloat16 autocast' if a.bf16 else ', float32'}."
          + (f" Skipped (--budget-s): {', '.join(skipped)}." if skipped else ""), "", table(rows, lens), "",
          f"## Needle accuracy by depth at {lens[-1]} tokens (the lost-in-the-middle curve)", "",
          depth_table(rows, "needle", lens[-1]), "", f"## Passkey accuracy by depth at {lens[-1]} tokens", "",
          depth_table(rows, "passkey", lens[-1]), ""]
    (out / "table.md").write_text("\n".join(md))
    plots(rows, lens, out)
    print("\n".join(md))
    print(out / "results.json")
    return out / "results.json"


if __name__ == "__main__":
    main()
