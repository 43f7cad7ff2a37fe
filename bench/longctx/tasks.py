"""The long-context tasks, built locally (no dataset hub): passkey retrieval and RULER-style multi-key needle retrieval,
each with the answer placed at a chosen depth, scored teacher-forced; and held-out perplexity on long text.

    Passkey (bench.method.passkey.Passkey)  filler, " the passkey is D D ." at depth d, filler,
                                            " what is the passkey? the passkey is" D D
    Needle(keys=4)                          filler with `keys` statements " the number for <word> is D D ." spread
                                            through it, the asked one at depth d, the others at random depths;
                                            " what is the number for <word>? the number for <word> is" D D

An example is (ids [T], labels [T]) with -100 everywhere but the DIGITS answer tokens; `score` is the share of
examples with every answer digit the argmax (and the per-digit share, and the answer loss), per depth.
"""
from __future__ import annotations

import torch

from bench.method.passkey import DIGITS, Passkey

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
NAMES = ("river", "stone", "moon", "door", "book", "fish", "tree", "star")


class Needle(Passkey):
    """Multi-key retrieval: `keys` (name, digits) statements, one asked; distractors with other names."""

    def __init__(self, tok, seed: int, keys: int = 4):
        super().__init__(tok, seed)
        self.keys = keys
        self.names = {n: tok(" " + n)["input_ids"] for n in NAMES}
        self.pre, self.mid = tok(" the number for")["input_ids"], tok(" is")["input_ids"]
        self.ask = tok(" what is the number for")["input_ids"], tok("? the number for")["input_ids"]

    def statement(self, name: str, key: list[int]) -> list[int]:
        return self.pre + self.names[name] + self.mid + key + self.dot

    def example(self, T: int, depth: float | None = None):
        names = self.rng.sample(NAMES, self.keys)
        keys = [[self.rng.choice(self.digits) for _ in range(DIGITS)] for _ in names]
        asked = 0
        tail = self.ask[0] + self.names[names[asked]] + self.ask[1] + self.names[names[asked]] + self.mid + keys[asked]
        stmts = [self.statement(n, k) for n, k in zip(names, keys)]
        room = T - len(tail) - sum(map(len, stmts))
        if room < 0:
            raise ValueError(f"{T} tokens cannot hold {self.keys} statements and the question ({T - room} tokens)")
        depth = self.rng.random() if depth is None else depth
        cuts = [int(round(depth * room))] + [self.rng.randrange(0, room + 1) for _ in names[1:]]
        order = sorted(range(len(names)), key=lambda i: (cuts[i], i))
        ids, at = [], 0
        for i in order:
            ids += self.fill(cuts[i] - at) + stmts[i]
            at = cuts[i]
        ids += self.fill(room - at) + tail
        return ids, [-100] * (T - DIGITS) + keys[asked]


def device_of(model) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


@torch.no_grad()
def score(model, task: Passkey, T: int, n: int, batch: int = 4) -> dict:
    """{depth: {"acc", "digit_acc", "loss"}} over the same n examples per (T, depth) for every model."""
    model.eval()
    out = {}
    for d in DEPTHS:
        ids, labels = task.fixed_batch(n, T, d)
        right, losses = [], []
        dev = device_of(model)
        for i in range(0, n, batch):
            logits = model(input_ids=ids[i:i + batch].to(dev)).logits[:, -DIGITS - 1:-1].float().cpu()
            target = labels[i:i + batch, -DIGITS:]
            right.append(logits.argmax(-1) == target)
            losses.append(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                            reduction="sum"))
        r = torch.cat(right)
        out[f"{d:.2f}"] = {"acc": r.all(-1).float().mean().item(), "digit_acc": r.float().mean().item(),
                           "loss": float(sum(losses)) / r.numel()}
    return out


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor) -> float:
    """exp(mean next-token cross-entropy) over held-out blocks [N, T] (one forward each)."""
    model.eval()
    dev = device_of(model)
    losses = [float(model(input_ids=b[None].to(dev), labels=b[None].to(dev)).loss) for b in blocks]
    return float(torch.tensor(losses).mean().exp())
