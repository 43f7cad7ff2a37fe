"""bench.longctx.tasks: a needle example is T tokens with the asked statement where the depth says and the answer its
last DIGITS tokens (the only labels); distractors carry other names; score() reads the answer exactly (an oracle that
puts all its mass on the right digit scores 1, one that never does scores 0); perplexity is exp(mean loss)."""
import math

import torch

from bench.longctx.tasks import DEPTHS, Needle, perplexity, score
from bench.method.passkey import DIGITS


def find(seq, sub):
    return [i for i in range(len(seq) - len(sub) + 1) if seq[i:i + len(sub)] == sub]


def test_needle_examples(tiny_base):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_base)
    task = Needle(tok, seed=0, keys=4)
    for depth in (0.0, 0.5, 1.0):
        ids, labels = task.example(96, depth)
        assert len(ids) == len(labels) == 96
        key = labels[-DIGITS:]
        assert ids[-DIGITS:] == key and all(x == -100 for x in labels[:-DIGITS])
        asked = ids[-DIGITS - len(task.mid) - 1]                     # the name token just before " is" D D
        stmt = task.pre + [asked] + task.mid + key + task.dot
        tail = len(task.ask[0]) + 1 + len(task.ask[1]) + 1 + len(task.mid) + DIGITS
        body = ids[:-tail]
        at = find(body, stmt)
        assert len(at) == 1, (depth, at)                             # asked once; distractors have other names
        assert sum(len(find(body, task.pre + task.names[n])) for n in task.names) == 4   # four statements
        if depth == 0.0:
            assert at[0] == 0                                        # first, before any filler
        if depth == 1.0:                                             # last but for statements: no filler after it
            assert (len(body) - at[0]) % len(stmt) == 0 and len(body) - at[0] <= 4 * len(stmt)


class Oracle(torch.nn.Module):
    def __init__(self, V, right: bool):
        super().__init__()
        self.V, self.right = V, right

    def forward(self, input_ids, labels=None):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.V)
        nxt = torch.roll(input_ids, -1, dims=1)                      # the true next token
        logits.scatter_(2, ((nxt if self.right else nxt + 1) % self.V)[..., None], 10.0)
        return type("Out", (), {"logits": logits, "loss": torch.tensor(2.0)})()


def test_score_and_perplexity_read_the_answer_exactly(tiny_base):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_base)
    task = Needle(tok, seed=1)
    good, bad = score(Oracle(512, True), task, 64, 3), score(Oracle(512, False), task, 64, 3)
    assert set(good) == {f"{d:.2f}" for d in DEPTHS}
    assert all(v["acc"] == 1 and v["digit_acc"] == 1 for v in good.values())
    assert all(v["acc"] == 0 and v["digit_acc"] == 0 for v in bad.values())
    assert math.isclose(perplexity(Oracle(512, True), torch.zeros(2, 8, dtype=torch.long)), math.exp(2.0), rel_tol=1e-6)
