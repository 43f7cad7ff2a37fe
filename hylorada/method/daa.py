"""PositionalDAA: per-head logit scale and a relative-position bucket bias on attention scores.

    scores'[b,h,i,j] = head_scale[h] * scores[b,h,i,j] + bucket_bias[h, bucket(q_i - k_j)]

(functional.daa_scores / functional.daa_bias). head_scale starts at 1 and bucket_bias at 0, so a
fresh module is the identity. Installed as `self_attn.daa` on each decoder layer (checkpoint keys
model.layers.{i}.self_attn.daa.head_scale [H] and .bucket_bias [H, nb]); the `hylorada` attention
function (attention.py) finds it there and applies it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from hylorada import functional as F


class PositionalDAA(nn.Module):
    """head_scale [H] (init 1), bucket_bias [H, nb] (init 0): identity at initialisation."""

    def __init__(self, num_heads: int, num_buckets: int = 64, max_position: int = 32768):
        super().__init__()
        self.num_heads, self.num_buckets, self.max_position = num_heads, num_buckets, max_position
        self.head_scale = nn.Parameter(torch.ones(num_heads))
        self.bucket_bias = nn.Parameter(torch.zeros(num_heads, num_buckets))

    def forward(self, scores: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """scores: [B, H, Tq, Tk] (already times 1/sqrt(d)), q_pos: [B, Tq], k_pos: [B, Tk] -> same shape."""
        return F.daa_scores(scores, q_pos, k_pos, self.head_scale, self.bucket_bias, self.max_position)

    def bias(self, q_pos: Tensor, k_pos: Tensor, heads: slice = slice(None)) -> Tensor:
        """The additive part only, [B, h, Tq, Tk] for the selected heads (fused attention paths)."""
        return F.daa_bias(q_pos, k_pos, self.bucket_bias[heads], self.max_position)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, buckets={self.num_buckets}, max_position={self.max_position}"
