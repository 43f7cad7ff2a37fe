"""rsLoRA's claim on its own (issue 23, item 2): loss after N steps at r in {8, 32, 128}, scale alpha/r vs alpha/sqrt(r).

    python -m bench.method.rslora_rank [--base smollm2-135m-instruct] [--ranks 8,32,128] [--steps 30] [--seq 256]
                                       [--batch 2] [--lr 2e-4] [--alpha 16] [--seeds 0]

Each run is `hylorada train`'s loop (hylorada.train.loop.train: AdamW, no weight decay, gradient clipping at 1.0, the
same batches for every run of a seed) on HyLoRADA with only the scale changing: use_rslora false (alpha/r, LoRA's)
or true (alpha/sqrt r), position bias off, all seven projections, float32. Data: this repository's docs (real
English/technical text, tokenized by the base's tokenizer); held out: bench/README.md, never trained on.
Reported per run: the training loss curve, the mean of its last 5 steps, and the held-out loss (mean next-token
cross-entropy over up to 8 held-out blocks). rsLoRA's claim (Kalajdzievski 2023): with alpha/r the higher ranks
learn no faster (their update shrinks as 1/r); with alpha/sqrt r they learn faster. Writes
bench/results/rslora_rank.json and rslora_rank.png; the last line printed is the JSON summary.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.compare.adapters import resolve_base

RESULTS = Path(__file__).resolve().parents[1] / "results"
ROOT = Path(__file__).resolve().parents[2]
HELD_OUT = ROOT / "bench" / "README.md"
LAST = 5


def texts(td: Path) -> tuple[Path, Path]:
    train = td / "train.txt"
    train.write_text("\n\n".join(f.read_text() for f in sorted((ROOT / "docs").glob("*.md"))))
    held = td / "held_out.txt"
    held.write_text(HELD_OUT.read_text())
    return train, held


def held_out_loss(model, tokenizer, path: Path, seq: int, blocks: int = 8) -> float:
    import torch

    from hylorada.train.data import load_blocks
    data = load_blocks(path, tokenizer, seq)[:blocks]
    model.eval()
    with torch.no_grad():
        return float(sum(model(input_ids=b[None], labels=b[None]).loss for b in data) / len(data))


def run(base: Path, data: Path, held: Path, work: Path, rank: int, rslora: bool, a) -> dict:
    from transformers import AutoTokenizer

    from hylorada import HyLoRADAConfig
    from hylorada.train.loop import train
    cfg = HyLoRADAConfig(lora_rank=rank, lora_alpha=a.alpha, use_rslora=rslora, position_bias_enabled=False)
    t0 = time.perf_counter()
    res = train(base, data, work, cfg, seq_len=a.seq, steps=a.steps, batch_size=a.batch, lr=a.lr, seed=a.seed,
                save_every=10 ** 6, log_every=10 ** 6, export=False, progress=False, log=lambda *_: None)
    losses = res["losses"]
    return {"rank": rank, "scale": "alpha/sqrt(r)" if rslora else "alpha/r", "scaling": cfg.scaling,
            "seed": a.seed, "losses": [round(x, 5) for x in losses],
            "final_train_loss": round(sum(losses[-LAST:]) / len(losses[-LAST:]), 5),
            "held_out_loss": round(held_out_loss(res["model"], AutoTokenizer.from_pretrained(base), held, a.seq), 5),
            "seconds": round(time.perf_counter() - t0, 1)}


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {}
    for r in runs:
        c = colours.setdefault(r["rank"], f"C{len(colours)}")
        ax.plot(range(1, len(r["losses"]) + 1), r["losses"], color=c, linestyle="-" if "sqrt" in r["scale"] else "--",
                label=f"r={r['rank']} {r['scale']}" + (f" seed {r['seed']}" if r["seed"] else ""))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("rsLoRA (solid: alpha/sqrt r) vs LoRA (dashed: alpha/r)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="smollm2-135m-instruct")
    p.add_argument("--ranks", default="8,32,128")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--seeds", default="0")
    p.add_argument("--out", default=str(RESULTS / "rslora_rank.json"))
    a = p.parse_args(argv)
    base = resolve_base(a.base)[0]
    runs = []
    with tempfile.TemporaryDirectory() as td:
        data, held = texts(Path(td))
        for seed in map(int, a.seeds.split(",")):
            a.seed = seed
            for rank in map(int, a.ranks.split(",")):
                for rslora in (False, True):
                    r = run(base, data, held, Path(td) / f"r{rank}-{int(rslora)}-s{seed}", rank, rslora, a)
                    runs.append(r)
                    print(f"r={rank:4d} {r['scale']:14s} seed {seed}: train {r['final_train_loss']:.4f} "
                          f"held-out {r['held_out_loss']:.4f} ({r['seconds']} s)", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"command": f"python -m bench.method.rslora_rank --base {a.base} --ranks {a.ranks} --steps {a.steps} "
                      f"--seq {a.seq} --batch {a.batch} --lr {a.lr} --alpha {a.alpha} --seeds {a.seeds}",
           "runs": runs}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    plot(runs, out.with_suffix(".png"))
    summary = {f"r{r['rank']} {r['scale']} s{r['seed']}": [r["final_train_loss"], r["held_out_loss"]] for r in runs}
    print(json.dumps(summary))
    return doc


if __name__ == "__main__":
    main()
