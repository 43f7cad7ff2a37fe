"""Passkey retrieval at 4x the training length: RoPE scaling + HyLoRADA, with and without the
position bias / landmarks / DAA. A learning result the project generates itself (seeded, CPU, minutes).

    python -m bench.method.passkey [--short 32 --factor 4 --base-steps 300 --adapt-steps 60 --eval-n 40]

1. A tiny Llama (2 layers, d=64 = 2 heads of 32, random init from hylorada.tiny) is trained on passkey sequences of
   `short` tokens: filler text, "the passkey is D D ." (2 digits) at a random depth, more filler, then
   "what is the passkey? the passkey is" and the digits (loss on the answer digits only).
2. At long = factor * short tokens it is evaluated as is, with linear RoPE scaling (zero-shot), and after a
   brief HyLoRADA fine-tune at the long length (RoPE scaling on) in several configurations.
3. Table: per passkey depth, the share of answers with every digit right (teacher-forced argmax) and the
   mean answer loss, written to bench/results/passkey.json and .md with the command that made it.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parents[1] / "results"
DIGITS = 2
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


class Passkey:
    """Token-level generator. example(T, depth) -> (ids [T], labels [T] with -100 except the answer digits)."""

    def __init__(self, tok, seed: int):
        from hylorada.tiny import corpus
        self.rng = random.Random(seed)
        self.digits = tok.convert_tokens_to_ids(list("0123456789"))
        self.stmt = tok(" the passkey is")["input_ids"]
        self.dot = tok(" .")["input_ids"]
        self.question = tok(" what is the passkey? the passkey is")["input_ids"]
        self._fixed: dict = {}
        self.filler = [t for line in corpus(3000, seed=seed + 11) for t in tok(" " + line)["input_ids"]]

    def fill(self, n: int) -> list[int]:
        start = self.rng.randrange(0, len(self.filler) - n - 1)
        return self.filler[start:start + n]

    def example(self, T: int, depth: float | None = None):
        key = [self.rng.choice(self.digits) for _ in range(DIGITS)]
        stmt = self.stmt + key + self.dot
        tail = self.question + key
        room = T - len(stmt) - len(tail)
        depth = self.rng.random() if depth is None else depth
        before = int(round(depth * room))
        ids = self.fill(before) + stmt + self.fill(room - before) + tail
        labels = [-100] * (T - DIGITS) + key
        return ids, labels

    def fixed_batch(self, n: int, T: int, depth: float):
        """The same n examples for (T, depth) on every call: every setting is scored on identical sequences."""
        key = (n, T, depth)
        if key not in self._fixed:
            state = self.rng.getstate()
            self.rng.seed((n * 1000003 + T) * 1009 + int(depth * 1000))
            self._fixed[key] = self.batch(n, T, depth)
            self.rng.setstate(state)
        return self._fixed[key]

    def batch(self, n: int, T: int, depth: float | None = None):
        ex = [self.example(T, depth) for _ in range(n)]
        return torch.tensor([e[0] for e in ex]), torch.tensor([e[1] for e in ex])


def loss_fn(model, ids, labels):
    return model(input_ids=ids, labels=labels).loss


def fit(model, params, data: Passkey, T: int, steps: int, batch: int, lr: float, label: str, log_every: int = 50,
        eval_at: tuple = (), eval_fn=None):
    """AdamW with warm-up + cosine; returns the per-step losses. eval_fn(step) is called after each step in eval_at."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    t0, losses = time.perf_counter(), []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        ids, labels = data.batch(batch, T)
        loss = loss_fn(model, ids, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step + 1 in eval_at and eval_fn is not None:
            eval_fn(step + 1)
            model.train()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            print(f"  [{label}] step {step + 1}/{steps} loss {sum(losses[-log_every:]) / len(losses[-log_every:]):.3f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model, data: Passkey, T: int, n: int) -> dict:
    """{depth: {"acc": share with all digits right, "digit_acc", "loss"}} (teacher-forced argmax)."""
    model.eval()
    out = {}
    for d in DEPTHS:
        ids, labels = data.fixed_batch(n, T, d)
        logits = model(input_ids=ids).logits[:, -DIGITS - 1:-1]                    # predictions of the digits
        target = labels[:, -DIGITS:]
        right = logits.argmax(-1) == target
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        out[f"{d:.2f}"] = {"acc": right.all(-1).float().mean().item(), "digit_acc": right.float().mean().item(),
                           "loss": loss.item()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64, help="tiny Llama width (heads of 32)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--base-steps", type=int, default=300)
    ap.add_argument("--base-batch", type=int, default=16)
    ap.add_argument("--adapt-steps", type=int, default=60)
    ap.add_argument("--adapt-batch", type=int, default=8)
    ap.add_argument("--eval-n", type=int, default=40)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/hylorada-passkey", help="scratch folder for the trained base")
    ap.add_argument("--out", default=str(RESULTS / "passkey"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hylorada.config import HyLoRADAConfig
    from hylorada.method.model import HyLoRADAModel
    from hylorada.method.rope import load_scaled_config
    from hylorada.tiny import TinySpec, build_tiny_llama

    short, long = args.short, args.short * args.factor
    spec = TinySpec(hidden_size=args.hidden, intermediate_size=2 * args.hidden, num_hidden_layers=args.layers,
                    num_attention_heads=args.hidden // 32, num_key_value_heads=max(1, args.hidden // 64),
                    max_position_embeddings=short, seed=args.seed)
    work = Path(args.work)
    raw = build_tiny_llama(work / "raw", spec)
    tok = AutoTokenizer.from_pretrained(raw)
    train_data, eval_data = Passkey(tok, args.seed), Passkey(tok, args.seed + 1000)

    # 1. the base learns the task at the short length (full training of the tiny model)
    base_dir = work / f"base-{short}-{args.hidden}x{args.layers}-{args.base_steps}-{args.seed}"
    if not (base_dir / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(raw, dtype=torch.float32)
        fit(model, list(model.parameters()), train_data, short, args.base_steps, args.base_batch, 2e-3, "base")
        model.save_pretrained(base_dir)
        tok.save_pretrained(base_dir)
    rows = {}
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    rows["base @ short (in distribution)"] = evaluate(base, eval_data, short, args.eval_n)
    rows["base @ 4x, no scaling"] = evaluate(base, eval_data, long, args.eval_n)
    rope = dict(rope_scaling_type="linear", rope_scaling_factor=float(args.factor), rope_original_max_position=short)
    scaled = AutoModelForCausalLM.from_pretrained(base_dir, config=load_scaled_config(base_dir, HyLoRADAConfig(**rope)),
                                                  dtype=torch.float32).eval()
    rows["base @ 4x, linear RoPE x4 (zero-shot)"] = evaluate(scaled, eval_data, long, args.eval_n)
    print(json.dumps({k: {d: round(v["acc"], 3) for d, v in r.items()} for k, r in rows.items()}), flush=True)

    # 2. brief HyLoRADA fine-tunes at the long length, RoPE scaling on
    variants = {
        "RoPE x4 + HyLoRADA (no position bias)": dict(position_bias_enabled=False),
        "RoPE x4 + HyLoRADA + position bias": dict(position_bias_enabled=True),
        "RoPE x4 + HyLoRADA + position bias + landmarks": dict(position_bias_enabled=True, landmark_enabled=True),
        "RoPE x4 + HyLoRADA + position bias + DAA": dict(position_bias_enabled=True, daa_enabled=True),
    }
    curves, progress = {}, {}
    eval_at = tuple(sorted({max(1, args.adapt_steps // 4), max(1, args.adapt_steps // 2), args.adapt_steps}))
    for name, kw in variants.items():
        torch.manual_seed(args.seed)
        cfg = HyLoRADAConfig(lora_rank=args.rank, lora_alpha=2.0 * args.rank ** 0.5, seed=args.seed, **rope, **kw)
        m = HyLoRADAModel.from_pretrained(base_dir, cfg)
        params = [p for p in m.parameters() if p.requires_grad]
        progress[name] = {}

        def at(step, m=m, name=name):
            progress[name][step] = evaluate(m, eval_data, long, args.eval_n)
        curves[name] = fit(m, params, train_data, long, args.adapt_steps, args.adapt_batch, 2e-3, name, eval_at=eval_at, eval_fn=at)
        rows[name] = progress[name][args.adapt_steps]
        print(name, json.dumps({d: round(v["acc"], 3) for d, v in rows[name].items()}), flush=True)

    command = "python -m bench.method.passkey " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    result = {"command": command.strip(), "short": short, "long": long, "digits": DIGITS, "eval_n_per_depth": args.eval_n,
              "base_steps": args.base_steps, "adapt_steps": args.adapt_steps, "adapt_batch": args.adapt_batch,
              "rank": args.rank, "seed": args.seed, "seconds": round(time.perf_counter() - t_start, 1),
              "rows": rows, "progress": {k: {str(st): {"mean_acc": round(sum(v["acc"] for v in r.values()) / len(r), 4),
                                                        "mean_loss": round(sum(v["loss"] for v in r.values()) / len(r), 4)}
                                                   for st, r in p.items()} for k, p in progress.items()},
              "adapt_loss_first_last": {k: [round(sum(c[:10]) / 10, 3), round(sum(c[-10:]) / 10, 3)]
                                                       for k, c in curves.items()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(json.dumps({"passkey": {k: round(sum(v["acc"] for v in r.values()) / len(r), 3) for k, r in rows.items()},
                      "seconds": result["seconds"]}))
    return 0


def markdown(res: dict) -> str:
    depths = list(next(iter(res["rows"].values())).keys())
    lines = [f"# Passkey retrieval at {res['long']} tokens (trained at {res['short']})", "",
             f"Command: `{res['command']}` ({res['seconds']} s). {res['digits']}-digit passkey, {res['eval_n_per_depth']} "
             f"sequences per depth; cell = share of answers with every digit right (mean answer loss).", "",
             "| setting | " + " | ".join(f"depth {d}" for d in depths) + " | mean |",
             "|---|" + "---|" * (len(depths) + 1)]
    for name, r in res["rows"].items():
        cells = [f"{r[d]['acc']:.2f} ({r[d]['loss']:.2f})" for d in depths]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {sum(r[d]['acc'] for d in depths) / len(depths):.2f} |")
    steps = list(next(iter(res["progress"].values())).keys())
    lines += ["", "During the adapter fine-tune at the long length (mean over depths: all-digits accuracy / answer loss):", "",
              "| setting | " + " | ".join(f"after {s} steps" for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for name, p in res["progress"].items():
        lines.append(f"| {name} | " + " | ".join(f"{p[s]['mean_acc']:.2f} / {p[s]['mean_loss']:.3f}" for s in steps) + " |")
    lines += ["", "Adapter fine-tune loss (first 10 steps -> last 10 steps): " +
              "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in res["adapt_loss_first_last"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
