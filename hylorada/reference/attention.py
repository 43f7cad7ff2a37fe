"""Per-row eager attention for the served-form reference: DAA and the served attention modes.

Registered in transformers' attention registry as NAME and switched on by ServedReference only for
a batch where some adapter has DAA or a non-full attention mode. For each row b (its own adapter):

    allowed     = transformers' mask (causal + padding) & functional.mode_allowed(mode, ...)   (no KV cache: Tq == Tk)
                  (mode "sink" on positions; mode "s2" on token indices, the row as its prompt)
    out[b]      = functional.eager_attention(q[b], k[b], v[b], allowed, scaling, DAA of this layer)
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
    """allowed [1|H, T, T] for one row after its adapter's attention mode (functional.mode_allowed); pos: [T].
    S² runs on token indices with the whole row as its prompt (this reference recomputes the full sequence)."""
    att = ad.meta.attention if ad is not None else Attention()
    if att.mode == "full":
        return allowed
    p = torch.arange(pos.shape[0], device=pos.device) if att.mode == "s2" else pos
    return allowed & F.mode_allowed(att.mode, p, p, sink_tokens=att.sink_tokens, window=att.window,
                                    s2_ratio=att.s2_group_size_ratio, total_heads=num_heads)


def served_attention_forward(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                             dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers attention-function signature. query [B, H, T, d], key/value [B, Hkv, T, d] -> ([B, T, H, d], None)."""
    batch = module.__dict__["_served_ref_batch"]
    B, H, T, d = query.shape
    if key.shape[2] != T:
        raise NotImplementedError("the served reference recomputes the full sequence (no KV cache)")
    scaling = d ** -0.5 if scaling is None else scaling
    if attention_mask is None:
        attention_mask = torch.ones(T, T, dtype=torch.bool, device=query.device).tril()[None, None]
    elif attention_mask.dtype != torch.bool:
        attention_mask = attention_mask == 0                      # additive float mask -> allowed
    outs = []
    for b, ad in enumerate(batch.adapters):
        pos = batch.pos(b).to(query.device)                       # [T]
        daa = ad.daa(module.layer_idx) if ad is not None else None
        daa = None if daa is None else (*daa, ad.meta.daa.max_position)
        ok = row_allowed(ad, pos, attention_mask[b if attention_mask.shape[0] > 1 else 0], H)
        outs.append(F.eager_attention(query[b], key[b], value[b], ok, scaling, daa, pos, pos))   # [H, T, d]
    return torch.stack(outs).transpose(1, 2).contiguous(), None
