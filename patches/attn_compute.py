"""Reference attention over vLLM's paged KV cache: a request's query chunk, or a batch of decode queries (torch only).

Used by attn_backend for the requests whose adapter has PositionalDAA or a non-full attention mode;
vLLM's CPU kernel cannot express a per-head bucket bias, a sink+window union or S² groups. The mask
(functional.mode_allowed) and the attention body (functional.eager_attention) are the ones the served
reference uses; this module only finds the keys in the paged cache:

    s[h, i, j]  = scale * q[i, h] . k[j, kv(h)]                          kv(h) = h // (H // Hkv)
    s           = daa_scores(s, q_pos, k_pos, head_scale, bucket_bias)    adapter has DAA at this layer
    allowed     = k_pos <= q_pos                                          always (causal)
                  & sink_window_allowed(q_pos, k_pos, sinks, window)      mode "sink"
                  & s2_allowed(i, j, G, s2_shift(h, H, G, P), sinks)      mode "s2", queries i < P only
    out[i, h]   = softmax_j(s masked to allowed) @ v[j, kv(h)]

In vLLM a token's position is its index in the sequence, so q_pos/k_pos are also the S² indices.
S² (`s2`): G = s2_group_size(P, ratio) from the prompt length P, so chunked prefill gives what one
prefill gives; tokens generated after the prompt attend causally to everything (S² is a prefill
pattern; this is what HyLoRADAModel does with a KV cache: S² prefill, full-attention decode).

Cost: queries are taken in blocks of QBLOCK; in `sink` mode a block reads only the sink keys and
the window before it, so work and memory per token are O(sinks + window + QBLOCK), not O(length).
"""
from __future__ import annotations

import torch
from torch import Tensor

from hylorada import functional as F

from .attn_state import ModeSpec

QBLOCK = 256


def key_positions(spec: ModeSpec, q_lo: int, q_hi: int) -> Tensor:
    """Positions of the keys that queries at positions [q_lo, q_hi) may see (sorted, int64)."""
    if spec.mode != "sink":
        return torch.arange(q_hi)
    start = max(0, q_lo - spec.window + 1)
    sinks = torch.arange(min(spec.sink_tokens, start))
    return torch.cat([sinks, torch.arange(start, q_hi)])


class PagedKV:
    """Read one layer's paged KV cache by token position.

    key_cache / value_cache: [num_blocks, Hkv, block_size, d] views vLLM's CPU backend hands its kernel;
    `keys_transposed`: the key block is stored [d, block_size] inside that memory (the "vec" ISA layout,
    detected by attn_backend with a probe write, never assumed).
    """

    def __init__(self, key_cache: Tensor, value_cache: Tensor, keys_transposed: bool):
        nb, hkv, bs, d = key_cache.shape
        self.bs = bs
        if keys_transposed:
            st = key_cache.stride()
            key_cache = key_cache.as_strided((nb, hkv, d, bs), (st[0], st[1], bs, 1))
        self.k, self.v, self.kt = key_cache, value_cache, keys_transposed

    def gather(self, block_row: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """block_row: the request's block table row; pos [m] -> (k [m, Hkv, d], v [m, Hkv, d])."""
        blocks, off = block_row[pos // self.bs].long(), pos % self.bs
        k = self.k[blocks, :, :, off] if self.kt else self.k[blocks, :, off, :]
        return k, self.v[blocks, :, off, :]

    def gather_batch(self, block_rows: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """block_rows [R, nblk], pos [R, m] -> (k, v) [R, m, Hkv, d]."""
        blocks, off = block_rows.gather(1, pos // self.bs).long(), pos % self.bs
        k = self.k[blocks, :, :, off] if self.kt else self.k[blocks, :, off, :]
        return k, self.v[blocks, :, off, :]


def decode_keys(spec: ModeSpec, seq_lens: Tensor) -> tuple[Tensor, Tensor]:
    """Key positions [R, m] (padded with 0) and validity [R, m] for one decode query per request at
    position seq_lens - 1: the sinks + window in `sink` mode, else every earlier key."""
    q = seq_lens - 1
    if spec.mode == "sink":
        w0 = (q - spec.window + 1).clamp_min(0)
        ns = w0.clamp_max(spec.sink_tokens)                                     # sinks not already in the window
        n = ns + q - w0 + 1
    else:
        w0, ns, n = torch.zeros_like(q), torch.zeros_like(q), seq_lens
    j = torch.arange(int(n.max()))[None]
    pos = torch.where(j < ns[:, None], j, w0[:, None] + j - ns[:, None])
    valid = j < n[:, None]
    return pos.masked_fill(~valid, 0), valid


def decode_attention(q: Tensor, kv: "PagedKV", block_rows: Tensor, seq_lens: Tensor, spec: ModeSpec, slots: list[int],
                     daa: dict, scale: float) -> Tensor:
    """One decode query per request, batched: q [R, H, d] at positions seq_lens - 1, all with `spec`
    (`s2` decode is causal); slots [R] the requests' slots, daa {slot: (head_scale, bucket_bias, max_pos)}.
    Same rules as functional.mode_allowed / eager_attention (batched over requests); DAA is applied with daa_scores once per distinct slot."""
    R, H, _ = q.shape
    k_pos, valid = decode_keys(spec, seq_lens)                                   # [R, m]
    q_pos = (seq_lens - 1)[:, None]                                               # [R, 1]
    k, v = kv.gather_batch(block_rows, k_pos)                                    # [R, m, Hkv, d]
    rep = H // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2).float(), v.repeat_interleave(rep, dim=2).float()
    s = torch.einsum("rhd,rmhd->rhm", q.float(), k) * scale                      # [R, H, m]
    slot_t = torch.tensor(slots)
    for slot, tables in daa.items():
        rows = (slot_t == slot).nonzero().squeeze(1)
        if rows.numel():
            s[rows] = F.daa_scores(s[rows][:, :, None, :], q_pos[rows], k_pos[rows], *tables)[:, :, 0, :]
    allowed = valid & (k_pos <= q_pos)
    if spec.mode == "sink":
        allowed &= F.sink_window_allowed(q_pos, k_pos, spec.sink_tokens, spec.window)
    p = torch.softmax(s.masked_fill(~allowed[:, None, :], float("-inf")), dim=-1)
    return torch.einsum("rhm,rmhd->rhd", p, v).to(q.dtype)


def request_attention(q: Tensor, kv: PagedKV, block_row: Tensor, seq_len: int, spec: ModeSpec, daa: tuple | None,
                      prompt_len: int, scale: float, out: Tensor, heads: range | None = None, total_heads: int = 0) -> None:
    """Attention of one request's queries q [n, H, d] (positions seq_len-n .. seq_len-1) into out [n, H, d].
    heads/total_heads: which global heads q holds (default: all of them); daa must already be sliced to them."""
    n, H = q.shape[0], q.shape[1]
    first = seq_len - n
    for a in range(0, n, QBLOCK):
        b = min(n, a + QBLOCK)
        q_pos = torch.arange(first + a, first + b)
        k_pos = key_positions(spec, first + a, first + b)
        k, v = kv.gather(block_row, k_pos)
        allowed = F.mode_allowed(spec.mode, q_pos, k_pos, sink_tokens=spec.sink_tokens, window=spec.window,
                                 s2_ratio=spec.s2_ratio, heads=heads or range(H), total_heads=total_heads or H,
                                 prompt_len=prompt_len)                                          # [1|h, n, m]
        out[a:b] = F.eager_attention(q[a:b].transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), allowed, scale,
                                     daa, q_pos, k_pos).transpose(0, 1)
