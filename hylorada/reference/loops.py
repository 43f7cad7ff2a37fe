"""Slow twins of attention.py: plain Python loops over heads, groups and queries (tests only).

Each function returns [B, H, Tq, d] from q [B, H, Tq, d], k/v [B, Hkv, Tk, d] (head h reads kv head
h // (H // Hkv)), and takes the keys each query may see from an explicit rule written with Python
integers — not the tensor helpers the fast path uses — so the two are independent.
"""
from __future__ import annotations

import torch
from torch import Tensor

from hylorada import functional as F


def attend_one(q: Tensor, keys: Tensor, values: Tensor, scaling: float, q_pos: int | None = None,
               k_pos: list[int] | None = None, daa=None, head: int = 0) -> Tensor:
    """One query q [d] over keys/values [n, d]: softmax(DAA(q.k * scaling)) @ v -> [d]."""
    scores = (keys @ q) * scaling                                                     # [n]
    if daa is not None:
        s = scores.view(1, 1, 1, -1)
        qp, kp = torch.tensor([[q_pos]]), torch.tensor([k_pos])
        scores = F.daa_scores(s, qp, kp, daa.head_scale[head:head + 1], daa.bucket_bias[head:head + 1],
                              daa.max_position).view(-1)
    return torch.softmax(scores.double(), dim=0).to(values.dtype) @ values


def reference_attention(q: Tensor, k: Tensor, v: Tensor, visible, scaling: float, q_pos: Tensor | None = None,
                        k_pos: Tensor | None = None, daa=None) -> Tensor:
    """visible(b, h, i, j) -> bool (i: query row, j: key index). q_pos/k_pos: [B, Tq] / [B, Tk] (DAA only)."""
    B, H, Tq, d = q.shape
    Tk, rep = k.shape[2], H // k.shape[1]
    out = torch.zeros(B, H, Tq, d, dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                js = [j for j in range(Tk) if visible(b, h, i, j)]
                if not js:
                    continue
                kp = [int(k_pos[b, j]) for j in js] if daa is not None else None
                qp = int(q_pos[b, i]) if daa is not None else None
                out[b, h, i] = attend_one(q[b, h, i], k[b, h // rep, js], v[b, h // rep, js], scaling, qp, kp, daa, h)
    return out


def causal_reference(q, k, v, scaling, q_pos=None, k_pos=None, daa=None, key_ok=None):
    """Full causal attention (queries are the last Tq of the Tk keys); key_ok[b][j] False drops key j."""
    Tq, Tk = q.shape[2], k.shape[2]
    return reference_attention(q, k, v, lambda b, h, i, j: j <= Tk - Tq + i and (key_ok is None or bool(key_ok[b][j])),
                               scaling, q_pos, k_pos, daa)


def s2_reference(q, k, v, scaling, ratio: float, sink_tokens: int, pos=None, daa=None):
    """LongLoRA S² with sinks, as a loop over groups. No cache (Tq == Tk == T).

    For each head: G = round(ratio*T); if G < T the second half of the heads use groups shifted by G//2
    (the first of them is the half group [0, G//2)); every query sees the earlier keys of its own group
    plus the first `sink_tokens` tokens.
    """
    B, H, T, d = q.shape
    G = max(1, int(round(ratio * T)))
    rep = H // k.shape[1]
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            shift = G // 2 if (h >= H // 2 and G < T) else 0
            start = -shift
            while start < T:                                                       # one group per iteration
                members = [t for t in range(start, start + G) if 0 <= t < T]
                for i in members:
                    js = sorted({j for j in range(min(sink_tokens, T)) if j <= i} | {j for j in members if j <= i})
                    kp = [int(pos[b, j]) for j in js] if daa is not None else None
                    qp = int(pos[b, i]) if daa is not None else None
                    out[b, h, i] = attend_one(q[b, h, i], k[b, h // rep, js], v[b, h // rep, js], scaling, qp, kp, daa, h)
                start += G
    return out


def sink_reference(q, k, v, scaling, sink_tokens: int, window: int, q_pos: Tensor, k_pos: Tensor, daa=None):
    """Sink mode: key j is visible from query i iff k_pos <= q_pos and (k_pos < sinks or q_pos - k_pos < window)."""
    def visible(b, h, i, j):
        qp, kp = int(q_pos[b, i]), int(k_pos[b, j])
        return kp <= qp and (kp < sink_tokens or qp - kp < window)
    return reference_attention(q, k, v, visible, scaling, q_pos, k_pos, daa)
