"""The formulas against plain-Python twins."""
import math

import pytest
import torch

from hylorada import functional as F


def bucket_reference(p: int, nb: int = 64, max_pos: int = 32768) -> int:
    """DESIGN.md §2, written as the plain formula."""
    half = nb // 2
    if p < half:
        return p
    return min(nb - 1, half + math.floor(half * math.log(p / half) / math.log(max_pos / half)))


@pytest.mark.parametrize("nb,max_pos", [(64, 32768), (64, 2048), (16, 512)])
def test_position_bucket_matches_reference_and_covers_every_bucket(nb, max_pos):
    pos = torch.arange(0, max_pos + 50)
    got = F.position_bucket(pos, nb, max_pos).tolist()
    assert got == [bucket_reference(p, nb, max_pos) for p in pos.tolist()]
    assert set(got) == set(range(nb))                          # every bucket reachable
    assert all(a <= b for a, b in zip(got, got[1:]))           # monotone
    assert got[:nb // 2] == list(range(nb // 2))               # exact below half


def test_position_scale_identity_at_zero_bias():
    p = F.position_scale(torch.zeros(64), torch.tensor(0.3), torch.tensor([[0, 5, 63]]))
    assert torch.equal(p, torch.ones(1, 3))


def test_fold_to_served_equals_training_form():
    g = torch.Generator().manual_seed(0)
    W, x = torch.randn(24, 16, generator=g), torch.randn(5, 16, generator=g)
    A, B, b = torch.randn(4, 16, generator=g), torch.randn(24, 4, generator=g), torch.randn(24, generator=g)
    m_init = torch.linalg.norm(W, dim=1)
    m = m_init * (1 + 0.1 * torch.randn(24, generator=g))
    gate, rw, p = torch.tensor(0.7), torch.tensor(-0.4), torch.rand(5, generator=g) + 0.5
    s = F.lora_scaling(16, 4)
    y_train = F.hylorada_linear(x, W, b, A, B, s, m, m_init, gate, rw, p)
    A2, Bf, c = F.fold_to_served(W, A, B, s, m, m_init, gate, rw)
    y_served = F.served_linear(x, W, b, A2, Bf, c, p)
    torch.testing.assert_close(y_served, y_train, rtol=1e-6, atol=1e-6)
    # and the blend written the long way (DESIGN.md §2)
    beta, gg = torch.sigmoid(rw), torch.sigmoid(gate)
    n = torch.linalg.norm(W + s * B @ A, dim=1)
    base_plus = x @ W.t() + s * p[:, None] * (x @ A.t() @ B.t())
    long = (1 - beta) * ((gg * m + (1 - gg) * m_init) / n) * base_plus + beta * base_plus + b
    torch.testing.assert_close(y_train, long, rtol=1e-5, atol=1e-5)
    # merge of the static part
    torch.testing.assert_close(x @ F.merge_weight(W, A2, Bf, c).t() + b, F.served_linear(x, W, b, A2, Bf, c, None),
                               rtol=1e-5, atol=1e-5)


def test_fresh_layer_scale_is_exactly_one():
    W = torch.randn(8, 6)
    m = torch.linalg.norm(W, dim=1)
    c = F.blend_scale(F.effective_magnitude(m, m.clone(), torch.tensor(0.3)),
                      F.weight_norm(W, torch.randn(2, 6), torch.zeros(8, 2), 2.0), torch.tensor(0.1))
    assert torch.equal(c, torch.ones(8))


def test_weight_norm_without_forming_w_plus_sba_equals_the_direct_one():
    """The fast norm (one W A^T product, [r, r] terms) == the slow twin that forms W + s B A (PEFT's), float32 and
    bfloat16 weights, given ||W|| or not; B = 0 gives ||W|| bit for bit; a fresh layer's c stays exactly 1 with the
    layer's magnitude_init as w_norm."""
    g = torch.Generator().manual_seed(3)
    for d_out, d_in, r, s in ((64, 48, 8, 0.5), (576, 576, 16, 4.0), (1536, 576, 32, 2.0)):
        W = torch.randn(d_out, d_in, generator=g) * 0.05
        A, B = torch.randn(r, d_in, generator=g) / d_in ** 0.5, torch.randn(d_out, r, generator=g) * 0.02
        want = F.weight_norm_direct(W.double(), A.double(), B.double(), s)
        for w_norm in (None, torch.linalg.norm(W, dim=1)):
            torch.testing.assert_close(F.weight_norm(W, A, B, s, w_norm=w_norm).double(), want, rtol=2e-6, atol=1e-7)
        torch.testing.assert_close(F.weight_norm_direct(W, A, B, s).double(), want, rtol=2e-6, atol=1e-7)
        bf = F.weight_norm(W.bfloat16(), A.bfloat16(), B.bfloat16(), s)
        torch.testing.assert_close(bf.double(), want, rtol=1e-2, atol=1e-3)
        n = torch.linalg.norm(W, dim=1)
        assert torch.equal(F.weight_norm(W, A, torch.zeros_like(B), s), n)
        assert torch.equal(F.weight_norm(W, A, torch.zeros_like(B), s, w_norm=n), n)


def test_daa_scores_identity_and_reference():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 5, 7, generator=g)
    qp, kp = torch.arange(2, 7).expand(2, 5), torch.arange(7).expand(2, 7)
    assert torch.equal(F.daa_scores(s, qp, kp, torch.ones(3), torch.zeros(3, 64)), s)
    scale, bias = torch.randn(3, generator=g), torch.randn(3, 64, generator=g)
    got = F.daa_scores(s, qp, kp, scale, bias)
    for b in range(2):
        for h in range(3):
            for i in range(5):
                for j in range(7):
                    want = scale[h] * s[b, h, i, j] + bias[h, bucket_reference(max(int(qp[b, i] - kp[b, j]), 0))]
                    assert abs(got[b, h, i, j] - want) < 1e-6


def test_landmark_readout_closed_gate_is_zero():
    h = torch.randn(3, 4, 8)
    out = F.landmark_readout(h, torch.randn(5, 8), torch.randn(5, 8), torch.tensor(0.0))
    assert torch.equal(out, torch.zeros_like(out))


def test_embedding_lookup_equals_a_token_by_token_loop():
    """functional.embedding_lookup (searchsorted) picks exactly the rows a dict lookup per token picks: hits at the
    first and last id, misses between, above and below them, an empty table; changed_rows finds just the moved rows."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(300, 8, generator=g)
    trained = base.clone()
    moved = [0, 5, 6, 150, 299]
    trained[moved] += torch.randn(len(moved), 8, generator=g)
    ids, rows = F.changed_rows(trained, base)
    assert ids.tolist() == moved and ids.dtype == torch.int64 and torch.equal(rows, trained[moved])
    tokens = torch.cat([torch.tensor([0, 299, 4, 7, 151, 298, 5]), torch.randint(0, 300, (200,), generator=g)])
    where, got = F.embedding_lookup(tokens, ids, rows)
    table = dict(zip(ids.tolist(), rows))
    want = [table[t] for t in tokens.tolist() if t in table]
    assert where.tolist() == [t in table for t in tokens.tolist()]
    assert torch.equal(got, torch.stack(want))
    where, got = F.embedding_lookup(tokens, ids[:0], rows[:0])
    assert not where.any() and got.shape == (0, 8)
