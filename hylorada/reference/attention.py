"""Per-row eager attention for the served-form reference: DAA and the served attention modes.

Registered in transformers' attention registry as NAME and switched on by ServedReference only for
a batch where some adapter has DAA or a non-full attention mode. For each row b (its own adapter):

    s[h, i, j]  = scaling * q[b, h, i] . k[b, kv(h), j]                 (no KV cache: Tq == Tk)
    s           = daa_scores(s, pos, pos, head_scale, bucket_bias)        if the adapter has DAA at this layer
    allowed     = transformers' mask (causal + padding)
                  & sink_window_allowed(pos_i, pos_j, sinks, window)      mode "sink"
                  & s2_allowed(i, j, G, s2_shift(h), sinks)               mode "s2" (token indices)
    out[b]      = softmax(s masked to allowed) v
"""
from __future__ import annotations

import torch
from torch import Tensor

from hylorada import functional as F
from hylorada.format.meta import Attention

NAME = "hylorada_served_reference"


def register() -> None:
    """Register NAME (idempotent); the mask builder is sdpa's, so padding arrives as it does for sdpa."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(NAME, served_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def row_allowed(ad, pos: Tensor, allowed: Tensor, num_heads: int) -> Tensor:
    """allowed [1|H, T, T] for one row after its adapter's attention mode; pos: [T]."""
    att = ad.meta.attention if ad is not None else Attention()
    mode, T = att.mode, pos.shape[0]
    if mode == "sink":
        allowed = allowed & F.sink_window_allowed(pos[:, None], pos[None, :], att.sink_tokens, att.window)
    elif mode == "s2":
        G = F.s2_group_size(T, att.s2_group_size_ratio)
        idx = torch.arange(T, device=pos.device)
        per_head = [F.s2_allowed(idx[:, None], idx[None, :], G, F.s2_shift(h, num_heads, G, T), att.sink_tokens)
                    for h in range(num_heads)]
        allowed = allowed & torch.stack(per_head)
    return allowed


def served_attention_forward(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                             dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers attention-function signature. query [B, H, T, d], key/value [B, Hkv, T, d] -> ([B, T, H, d], None)."""
    batch = module.__dict__["_served_ref_batch"]
    B, H, T, d = query.shape
    if key.shape[2] != T:
        raise NotImplementedError("the served reference recomputes the full sequence (no KV cache)")
    scaling = d ** -0.5 if scaling is None else scaling
    rep = H // key.shape[1]
    k, v = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    if attention_mask is None:
        attention_mask = torch.ones(T, T, dtype=torch.bool, device=query.device).tril()[None, None]
    elif attention_mask.dtype != torch.bool:
        attention_mask = attention_mask == 0                      # additive float mask -> allowed
    outs = []
    for b, ad in enumerate(batch.adapters):
        pos = batch.pos(b).to(query.device)                       # [T]
        s = (query[b] @ k[b].transpose(-1, -2)) * scaling          # [H, T, T]
        daa = ad.daa(module.layer_idx) if ad is not None else None
        if daa is not None:
            s = F.daa_scores(s[None], pos[None], pos[None], daa[0], daa[1], ad.meta.daa.max_position)[0]
        ok = row_allowed(ad, pos, attention_mask[b if attention_mask.shape[0] > 1 else 0], H)
        s = s.masked_fill(~ok, torch.finfo(s.dtype).min)
        outs.append(torch.softmax(s.float(), dim=-1).to(v.dtype) @ v[b])   # [H, T, d]
    return torch.stack(outs).transpose(1, 2).contiguous(), None
