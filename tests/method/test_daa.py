"""DAA buckets and bias against a plain-Python reference of DESIGN.md §2's bucketing."""
from __future__ import annotations

import math

import torch

from hylorada import functional as F
from hylorada.method.daa import PositionalDAA


def reference_bucket(p: int, num_buckets: int = 64, max_position: int = 32768) -> int:
    """bucket(p) = p for p < nb/2, else min(nb-1, nb/2 + floor(nb/2 * ln(p/(nb/2)) / ln(max/(nb/2)))); p < 0 -> 0."""
    half = num_buckets // 2
    p = max(p, 0)
    if p < half:
        return p
    return min(num_buckets - 1, half + math.floor(half * math.log(p / half) / math.log(max_position / half)))


def test_daa_buckets_match_reference_loop():
    mod = PositionalDAA(num_heads=3, num_buckets=16, max_position=200)
    with torch.no_grad():
        mod.bucket_bias.copy_(torch.arange(3 * 16, dtype=torch.float32).view(3, 16))
    q_pos = torch.tensor([[0, 5, 40, 199, 500]])
    k_pos = torch.tensor([[0, 1, 7, 8, 9, 30, 150, 199]])
    bias = mod.bias(q_pos, k_pos)                                        # [1, 3, 5, 8]
    for h in range(3):
        for i, qp in enumerate(q_pos[0].tolist()):
            for j, kp in enumerate(k_pos[0].tolist()):
                assert bias[0, h, i, j].item() == h * 16 + reference_bucket(qp - kp, 16, 200)


def test_default_buckets_every_distance_to_40000():
    d = torch.arange(-3, 40000)
    got = F.position_bucket(d, 64, 32768).tolist()
    assert got == [reference_bucket(int(x)) for x in d.tolist()]


def test_daa_scores_is_scale_plus_bias_and_identity_at_init():
    mod = PositionalDAA(4, 64, 32768)
    s = torch.randn(2, 4, 5, 7)
    qp, kp = torch.arange(2, 7)[None].expand(2, 5), torch.arange(7)[None].expand(2, 7)
    assert torch.equal(mod(s, qp, kp), s)                                 # head_scale 1, bias 0
    with torch.no_grad():
        mod.head_scale.uniform_(0.5, 1.5)
        mod.bucket_bias.normal_()
    torch.testing.assert_close(mod(s, qp, kp), s * mod.head_scale.view(1, 4, 1, 1) + mod.bias(qp, kp))
