"""The `hylorada` attention function, registered in transformers' attention registry.

    model.config._attn_implementation = "hylorada"     (install_extensions does this; register() first)

It is called by each decoder layer's attention module exactly where sdpa would be, with
query [B, H, Tq, d], key/value [B, Hkv, Tk, d] (RoPE applied, KV cache already appended) and the
mask transformers' sdpa mask builder made (None for plain causal, else bool [B, 1, Tq, Tk]). Per layer
it applies, from what is attached to the attention module:

  module.daa                 PositionalDAA: scores' = head_scale[h]*scores + bucket_bias[h, bucket(q_pos-k_pos)]
  module.hylorada_attention  AttentionSpec: S²-Attn (training forwards; or always in mode "s2") and the
                             `sink` mode (sinks + a window of recent keys); otherwise full causal attention.

With neither attached it is transformers' sdpa function itself (bit-identical). DAA goes into sdpa
as head_scale folded into q and the bucket bias as the additive mask, so a fresh DAA (scale 1, bias 0)
reproduces the base exactly on CPU. Positions: the call's `position_ids` kwarg (transformers passes the
decoder layer's position_ids through), else the model's PositionContext attached as
module._hylorada_context, else 0..Tk-1. Key positions: equal to the query positions without a cache;
cached keys continue backwards from the first query position.

Slow twins of every path: hylorada/attention_ref.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hylorada import functional as F

NAME = "hylorada"


@dataclass(frozen=True)
class AttentionSpec:
    mode: str = "full"          # full | sink | s2 (s2 here means S² in every forward, eval included)
    s2_train: bool = False      # S² in training forwards (module.training) only — LongLoRA
    s2_ratio: float = 0.25      # group size G = round(ratio * T)
    sink_tokens: int = 0        # first N tokens visible to every S² group / kept by the sink mode
    window: int = 1024          # sink mode: keys with q_pos - k_pos < window are kept

    @classmethod
    def from_config(cls, cfg) -> "AttentionSpec":
        return cls(cfg.attention_mode, cfg.s2_attn_enabled, cfg.s2_group_size_ratio, cfg.s2_sink_tokens, cfg.sink_window)


def register() -> None:
    """Register NAME with transformers' attention and mask registries (idempotent).

    The mask builder is sdpa's, so padding / packed sequences / caches reach us as they reach sdpa.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(NAME, hylorada_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def positions(module, kwargs: dict, batch: int, tq: int, tk: int, device) -> tuple[Tensor, Tensor]:
    """(q_pos [B|1, Tq], k_pos [B|1, Tk]) int64 for this call (batch 1 when every row shares positions)."""
    pos = kwargs.get("position_ids")
    if pos is None:
        ctx = getattr(module, "_hylorada_context", None)
        pos = getattr(ctx, "position_ids", None)
    if pos is None or pos.shape[-1] != tq:
        pos = torch.arange(tk - tq, tk, device=device)[None]
    pos = pos.to(device=device, dtype=torch.int64)
    q_pos = pos if pos.shape[0] == 1 else pos.expand(batch, tq)                       # [1, Tq] stays [1, Tq]: bias broadcasts
    if tk == tq:
        return q_pos, q_pos
    past = q_pos[:, :1] - torch.arange(tk - tq, 0, -1, device=device)[None]          # [B|1, Tk-Tq]
    return q_pos, torch.cat([past, q_pos], dim=1)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """[B, Hkv, T, d] -> [B, Hkv*n_rep, T, d] (head h reads kv head h // n_rep)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def masked_sdpa(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, bias: Tensor | None, scaling: float,
                dropout: float = 0.0) -> Tensor:
    """softmax(q k^T * scaling + bias, masked to `allowed`) v.  q/k/v: [N, h, Tq|Tk, d] (same h),
    allowed: bool broadcast to [N, h, Tq, Tk], bias: [N, h, Tq, Tk] or None. Returns [N, h, Tq, d]."""
    fill = torch.finfo(q.dtype).min
    add = torch.where(allowed, bias.to(q.dtype) if bias is not None else torch.zeros((), dtype=q.dtype, device=q.device),
                      torch.tensor(fill, dtype=q.dtype, device=q.device))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=add, dropout_p=dropout, scale=scaling)


def s2_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, pos: Tensor, daa, spec: AttentionSpec,
                 scaling: float, dropout: float = 0.0) -> Tensor:
    """Grouped S²-Attn (no cache: Tq == Tk == T). q: [B, H, T, d], k/v: [B, H, T, d] (kv already repeated),
    mask: bool [B|1, 1, T, T] or None, pos: [B, T]. Returns [B, H, T, d].

    Semantics (functional.s2_allowed; slow twin attention_ref.s2_reference): head h attends to key j from
    query i iff j <= i and (i, j share a group of size G after shifting by s2_shift(h), or j < sink_tokens).
    Cost O(T * (G + sinks)) per head: each group attends to its own G keys plus the sink keys.
    """
    B, H, T, _ = q.shape
    G, S = F.s2_group_size(T, spec.s2_ratio), min(spec.sink_tokens, T)
    pos = pos.expand(B, T)
    out = torch.empty_like(q)
    halves = [(0, H // 2), (H // 2, H)]
    for h0, h1 in halves:
        if h0 == h1:
            continue
        shift = F.s2_shift(h0, H, G, T)
        n_groups = math.ceil((T + shift) / G)
        rows = torch.arange(n_groups * G, device=q.device).view(n_groups, G) - shift       # [nG, G] token index
        row_ok = (rows >= 0) & (rows < T)
        sinks = torch.arange(S, device=q.device).expand(n_groups, S)
        cols = torch.cat([sinks, rows], dim=1)                                           # [nG, S+G]
        col_ok = torch.cat([sinks < rows[:, :1], row_ok], dim=1)                         # a sink already in the group is not repeated
        ri, ci = rows.clamp(0, T - 1), cols.clamp(0, T - 1)
        allowed = (row_ok[:, :, None] & col_ok[:, None, :]
                   & F.s2_allowed(rows[:, :, None], cols[:, None, :], G, shift, S))      # [nG, G, S+G]
        allowed = allowed[None, None]                                                    # [1, 1, nG, G, S+G]
        if mask is not None:
            allowed = allowed & mask[:, :, ri[:, :, None], ci[:, None, :]]
        hs = slice(h0, h1)
        qg, kg, vg = q[:, hs][:, :, ri], k[:, hs][:, :, ci], v[:, hs][:, :, ci]          # [B, h, nG, G|S+G, d]
        h, d = h1 - h0, q.shape[-1]

        def flat(x):                                                                     # [B, h, nG, n, d] -> [B*nG, h, n, d]
            return x.permute(0, 2, 1, 3, 4).reshape(B * n_groups, h, x.shape[3], d)
        qg, kg, vg = flat(qg), flat(kg), flat(vg)
        allowed = allowed.expand(B, 1, n_groups, G, S + G).permute(0, 2, 1, 3, 4).reshape(B * n_groups, 1, G, S + G)
        bias = None
        if daa is not None:
            qg = qg * daa.head_scale[hs].view(1, h, 1, 1).to(qg.dtype)
            bias = daa.bias(pos[:, ri].reshape(B * n_groups, G), pos[:, ci].reshape(B * n_groups, S + G), hs).to(qg.dtype)
        og = masked_sdpa(qg, kg, vg, allowed, bias, scaling, dropout)                    # [B*nG, h, G, d]
        og = og.view(B, n_groups, h, G, d).permute(0, 2, 1, 3, 4).reshape(B, h, n_groups * G, d)
        out[:, hs] = og[:, :, shift:shift + T]
    return out


def hylorada_attention_forward(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                               dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers attention-function signature; returns (out [B, Tq, H, d], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    spec = getattr(module, "hylorada_attention", None) or AttentionSpec()
    daa = getattr(module, "daa", None)
    B, H, Tq, d = query.shape
    Tk = key.shape[2]
    scaling = d ** -0.5 if scaling is None else scaling
    use_s2 = (spec.mode == "s2" or (spec.s2_train and module.training)) and Tq == Tk \
        and F.s2_group_size(Tk, spec.s2_ratio) < Tk
    if not use_s2 and spec.mode != "sink" and daa is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)

    q_pos, k_pos = positions(module, kwargs, B, Tq, Tk, query.device)
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        attention_mask = attention_mask >= 0                      # additive float mask -> allowed
    if use_s2:
        n_rep = H // key.shape[1]
        out = s2_attention(query, repeat_kv(key, n_rep), repeat_kv(value, n_rep), attention_mask, q_pos, daa, spec,
                           scaling, dropout)
        return out.transpose(1, 2).contiguous(), None

    mask = attention_mask
    if spec.mode == "sink":
        if mask is None:                                          # plain causal, aligned to the end of the keys
            mask = (torch.arange(Tk - Tq, Tk, device=query.device)[:, None]
                    >= torch.arange(Tk, device=query.device)[None, :])[None, None]
        mask = mask & F.sink_window_allowed(q_pos[:, None, :, None], k_pos[:, None, None, :], spec.sink_tokens, spec.window)
    bias = None
    if daa is not None:
        query = query * daa.head_scale.view(1, H, 1, 1).to(query.dtype)
        bias = daa.bias(q_pos, k_pos).to(query.dtype)
    return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling,
                                  position_bias=bias, **kwargs)
