"""The HyLoRADA formulas, once. Training layers, export, the served-form reference and the
vLLM patches all call these; nothing else writes the math again.

Notation (DESIGN.md §2-3): W [d_out, d_in] frozen, b [d_out] optional, A [r, d_in],
B [d_out, r], s = alpha/sqrt(r) (rsLoRA), B' = s*B (served form).

    p(pos)  = 1 + sigmoid(w_pos) * tanh(bias[bucket(pos)])            per token
    delta   = s * p(pos) * B A x
    n       = ||W + s B A||_row                                      detached
    m_eff   = g*m + (1-g)*m_init,  g = sigmoid(magnitude_gate)
    beta    = sigmoid(residual_weight)
    y       = (1-beta) * (m_eff/n) * (W x + delta) + beta * (W x + delta) + b
            = c * (W x + delta) + b,    c = 1 + (1-beta) * (m_eff/n - 1)

c is written as 1 + (1-beta)(m_eff/n - 1) (algebraically the blend) so that a fresh layer,
where m_eff == n exactly, gives c == 1.0 exactly and reproduces the base bit for bit.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


# --- scaling and bucketing -------------------------------------------------------

def lora_scaling(alpha: float, rank: int, use_rslora: bool = True) -> float:
    """s = alpha/sqrt(r) (rsLoRA, the default) or alpha/r (classic LoRA)."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def position_bucket(pos: Tensor, num_buckets: int = 64, max_position: int = 32768) -> Tensor:
    """Log bucket of a non-negative position (absolute, or a query-key distance for DAA).

    half = num_buckets // 2
    bucket(p) = p                                                       p < half
              = min(nb-1, half + floor(half * ln(p/half) / ln(max_position/half)))  otherwise

    Computed in float64 so every caller (training, export, serving) gets the same integers.
    pos: any shape, integer; negative values are clamped to 0. Returns int64, same shape.
    """
    half = num_buckets // 2
    return log_bucket(pos, half, num_buckets - 1, math.log(max_position / half))


def log_bucket(pos: Tensor, half, top, log_range) -> Tensor:
    """position_bucket with its constants given: half = nb // 2, top = nb - 1, log_range = ln(max_position / half)
    (a Python float, as position_bucket computes it). Each is a number, or a tensor broadcast against pos
    (int64 half/top, float64 log_range: one bucket setting per token, e.g. per adapter slot in the served static
    path) — the same float64 operations either way, so the same integers."""
    p = pos.to(torch.int64).clamp_min(0)
    pf = p.to(torch.float64).clamp_min(half)  # avoid log(0) in the unused branch
    log_part = half + torch.floor(half * torch.log(pf / half) / log_range)
    log_part = log_part.clamp_max(top).to(torch.int64)
    return torch.where(p < half, p, log_part)


def position_scale(bias: Tensor, w_pos: Tensor, buckets: Tensor) -> Tensor:
    """p = 1 + sigmoid(w_pos) * tanh(bias[buckets]).

    bias: [nb] (shared by every layer), w_pos: [] (one per layer) or [L] with buckets [..] broadcast
    by the caller, buckets: int64 [...]. Returns [...] in bias's dtype.
    """
    return 1 + torch.sigmoid(w_pos) * torch.tanh(bias[buckets])


# --- the linear layer --------------------------------------------------------------

def lora_delta(x: Tensor, A: Tensor, B: Tensor, scaling: float, p: Tensor | None = None) -> Tensor:
    """delta = scaling * p * (x A^T) B^T.

    x: [..., d_in], A: [r, d_in], B: [d_out, r], p: [...] per token or None (== 1).
    The rank-r intermediate is scaled by p (cheapest place; the served kernels do the same).
    """
    h = x @ A.t()                        # [..., r]
    if p is not None:
        h = h * p.unsqueeze(-1).to(h.dtype)
    return (h @ B.t()) * scaling         # [..., d_out]


def weight_norm(W: Tensor, A: Tensor, B: Tensor, scaling: float, w_norm: Tensor | None = None) -> Tensor:
    """n = ||W + s B A|| over d_in for each output row (PEFT's DoRA norm), detached, without forming W + s B A:

        n_i^2 = ||W_i||^2 + 2 s sum_k B_ik (W A^T)_ik + s^2 sum_kl B_ik (A A^T)_kl B_il

    W: [d_out, d_in], A: [r, d_in], B: [d_out, r] -> n: [d_out]. One [d_out, d_in] x [d_in, r] product (W read once)
    and [r, r]-sized ones, where the direct form (weight_norm_direct, the slow twin) writes and reads three
    [d_out, d_in] temporaries. w_norm: ||W_i|| [d_out] when known (W is frozen: HyLoRADAUnified.magnitude_init),
    else computed here. Statistics in float32; with B = 0 the result is w_norm exactly (sqrt(x^2) = x in binary
    floating point). Detached per DoRA §4.3 (and PEFT), so gradients match PEFT."""
    with torch.no_grad():
        f32 = torch.float32
        A32, B32 = A.to(f32), B.to(f32)
        w2 = (torch.linalg.norm(W.to(f32), dim=1) if w_norm is None else w_norm.to(f32)).square()
        cross = (B32 * (W @ A.t().to(W.dtype)).to(f32)).sum(1)                   # [d_out]
        quad = ((B32 @ (A32 @ A32.t())) * B32).sum(1)                            # ||(B A)_i||^2
        return (w2 + (2 * scaling) * cross + (scaling * scaling) * quad).clamp_min(0).sqrt().to(W.dtype)


def weight_norm_direct(W: Tensor, A: Tensor, B: Tensor, scaling: float) -> Tensor:
    """The slow twin of weight_norm: ||W + s B A|| per row with W + s B A formed (as PEFT computes it)."""
    with torch.no_grad():
        merged = W + scaling * (B @ A).to(W.dtype)
        return torch.linalg.norm(merged, dim=1).to(W.dtype)


def effective_magnitude(m: Tensor, m_init: Tensor, gate_logit: Tensor) -> Tensor:
    """m_eff = g*m + (1-g)*m_init, g = sigmoid(gate_logit). All [d_out] except the scalar logit."""
    g = torch.sigmoid(gate_logit)
    return g * m + (1 - g) * m_init


def blend_scale(m_eff: Tensor, n: Tensor, residual_logit: Tensor) -> Tensor:
    """c = 1 + (1-beta) * (m_eff/n - 1), beta = sigmoid(residual_logit). [d_out].

    Equal to (1-beta)*m_eff/n + beta: the DoRA/LoRA blend as one per-row scale.
    """
    beta = torch.sigmoid(residual_logit)
    return 1 + (1 - beta) * (m_eff / n - 1)


def served_linear(x: Tensor, W: Tensor, b: Tensor | None, A: Tensor, B_folded: Tensor,
                  c: Tensor | None, p: Tensor | None) -> Tensor:
    """The served form of one layer: y = c * (x W^T + p * (x A^T) B'^T) + b.

    x: [..., d_in], W: [d_out, d_in], A: [r, d_in], B_folded: [d_out, r] (= s*B),
    c: [d_out] or None (== 1), p: [...] or None (== 1). Returns [..., d_out].
    """
    y = F.linear(x, W) + lora_delta(x, A, B_folded, 1.0, p)
    if c is not None:
        y = y * c.to(y.dtype)
    return y if b is None else y + b


def hylorada_linear(x: Tensor, W: Tensor, b: Tensor | None, A: Tensor, B: Tensor, scaling: float,
                    m: Tensor, m_init: Tensor, gate_logit: Tensor, residual_logit: Tensor,
                    p: Tensor | None = None, lora_x: Tensor | None = None, w_norm: Tensor | None = None) -> Tensor:
    """Training form: y = c * (W x + s * p * B A x') + b with c from the gated DoRA blend.

    lora_x: the LoRA branch's input (x after dropout); defaults to x. w_norm: ||W_i|| [d_out] of the frozen W
    (weight_norm's shortcut; the layer keeps it as magnitude_init), else computed per call.
    """
    c = blend_scale(effective_magnitude(m, m_init, gate_logit), weight_norm(W, A, B, scaling, w_norm=w_norm),
                    residual_logit)
    y = F.linear(x, W) + lora_delta(x if lora_x is None else lora_x, A, B, scaling, p)
    y = y * c.to(y.dtype)
    return y if b is None else y + b


def fold_to_served(W: Tensor, A: Tensor, B: Tensor, scaling: float, m: Tensor, m_init: Tensor,
                   gate_logit: Tensor, residual_logit: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Static parts -> served form: (A, B' = s*B, c). Everything returned is detached."""
    with torch.no_grad():
        c = blend_scale(effective_magnitude(m, m_init, gate_logit), weight_norm(W, A, B, scaling), residual_logit)
        return A.detach().clone(), (scaling * B).detach().clone(), c.detach().clone()


def merge_weight(W: Tensor, A: Tensor, B_folded: Tensor, c: Tensor | None) -> Tensor:
    """W' = diag(c) (W + B' A): a served adapter with no dynamic parts as one dense weight."""
    merged = W + (B_folded @ A).to(W.dtype)
    return merged if c is None else merged * c.to(W.dtype).unsqueeze(1)


# --- attention-score and memory extensions --------------------------------------------

def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm as Llama defines it (transformers' LlamaRMSNorm): w * (x / sqrt(mean(x^2) + eps)), the statistics in
    float32, the normalised x cast back to x's dtype before the weight. x [..., d], weight [d] or [..., d]
    (a weight per token: a trained norm of each token's adapter)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def changed_rows(trained: Tensor, base: Tensor) -> tuple[Tensor, Tensor]:
    """The rows of a trained embedding table that differ from the base's: (ids [k] int64, increasing; rows [k, d]).
    trained, base [V, d]. AdamW without weight decay leaves a row no token of the data touched exactly as it was,
    so k is at most the number of distinct token ids trained on."""
    ids = (trained != base).any(dim=1).nonzero().squeeze(1)
    return ids, trained[ids]


def embedding_lookup(tokens: Tensor, ids: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Which tokens an adapter's trained embedding rows replace, and with what: (where [n] bool, rows [n_hit, d]).
    tokens [n] int; ids [k] strictly increasing int64; rows [k, d]. A token t with t == ids[j] takes rows[j]; every
    other token keeps the base's row (the served form stores only the rows training changed)."""
    if ids.numel() == 0:
        return torch.zeros_like(tokens, dtype=torch.bool), rows[:0]
    j = torch.searchsorted(ids, tokens.to(ids.dtype)).clamp_max(ids.numel() - 1)
    where = ids[j] == tokens
    return where, rows[j[where]]


def daa_scores(scores: Tensor, q_pos: Tensor, k_pos: Tensor, head_scale: Tensor, bucket_bias: Tensor,
               max_position: int = 32768) -> Tensor:
    """PositionalDAA: scores'[b,h,i,j] = head_scale[h] * scores[b,h,i,j] + bucket_bias[h, bucket(q_i - k_j)].

    scores: [B, H, Tq, Tk] (already times 1/sqrt(d)), q_pos: [B, Tq], k_pos: [B, Tk],
    head_scale: [H] (init 1), bucket_bias: [H, nb] (init 0). Distances below 0 (masked anyway)
    clamp to bucket 0. Identity at initialisation.
    """
    nb = bucket_bias.shape[-1]
    rel = q_pos[:, :, None] - k_pos[:, None, :]                       # [B, Tq, Tk]
    bias = bucket_bias[:, position_bucket(rel, nb, max_position)]      # [H, B, Tq, Tk]
    return scores * head_scale.view(1, -1, 1, 1).to(scores.dtype) + bias.permute(1, 0, 2, 3).to(scores.dtype)


def landmark_readout(h: Tensor, keys: Tensor, values: Tensor, gate: Tensor) -> Tensor:
    """LandmarkLoRA read-out for each token from its own hidden state only (no sequence mixing):

        out = tanh(gate) * softmax(h K^T / sqrt(d)) V

    h: [..., d], keys/values: [K, d], gate: [] (init 0: identity, still trainable). O(K*d) per token.
    """
    attn = torch.softmax((h @ keys.t().to(h.dtype)) / math.sqrt(h.shape[-1]), dim=-1)  # [..., K]
    return torch.tanh(gate).to(h.dtype) * (attn @ values.to(h.dtype))


# --- long-context attention patterns ------------------------------------------------------------

def daa_bias(q_pos: Tensor, k_pos: Tensor, bucket_bias: Tensor, max_position: int = 32768) -> Tensor:
    """The additive half of daa_scores: bias[b,h,i,j] = bucket_bias[h, bucket(q_i - k_j)].

    q_pos: [B, Tq], k_pos: [B, Tk], bucket_bias: [H, nb] -> [B, H, Tq, Tk].
    daa_scores(s, ...) == s * head_scale + daa_bias(...) (lets fused kernels take the bias as a mask).
    """
    rel = q_pos[:, :, None] - k_pos[:, None, :]                                    # [B, Tq, Tk]
    return bucket_bias[:, position_bucket(rel, bucket_bias.shape[-1], max_position)].permute(1, 0, 2, 3)


def s2_group_size(seq_len: int, ratio: float) -> int:
    """LongLoRA S²-Attn group size G = max(1, round(ratio * seq_len))."""
    return max(1, int(round(ratio * seq_len)))


def s2_shift(head: int, num_heads: int, group_size: int, seq_len: int) -> int:
    """Shift of one head's groups: G//2 for the second half of the heads, 0 for the first half,
    and 0 for every head when one group covers the sequence (S² then equals full attention)."""
    return group_size // 2 if head >= num_heads // 2 and group_size < seq_len else 0


def s2_allowed(q_idx: Tensor, k_idx: Tensor, group_size: int, shift: int, sink_tokens: int) -> Tensor:
    """S² pattern with sinks (token indices within one training sequence; broadcast shapes):

        allowed(i, j) = j <= i  and  ( (i+shift)//G == (j+shift)//G  or  j < sink_tokens )
    """
    same = torch.div(q_idx + shift, group_size, rounding_mode="floor") == torch.div(k_idx + shift, group_size, rounding_mode="floor")
    return (k_idx <= q_idx) & (same | (k_idx < sink_tokens))


def sink_window_allowed(q_pos: Tensor, k_pos: Tensor, sink_tokens: int, window: int) -> Tensor:
    """`sink` attention mode (StreamingLLM): allowed(i, j) = k_j <= q_i and (k_j < sink_tokens or q_i - k_j < window).
    Positions (not indices), so left padding keeps the first real tokens as the sinks. Broadcast shapes."""
    return (k_pos <= q_pos) & ((k_pos < sink_tokens) | (q_pos - k_pos < window))


def mode_allowed(mode: str, q_pos: Tensor, k_pos: Tensor, *, sink_tokens: int = 0, window: int = 1, s2_ratio: float = 0.25,
                 heads: range | None = None, total_heads: int = 1, prompt_len: int | None = None) -> Tensor:
    """The served attention modes as one mask, causal included. q_pos [n], k_pos [m] -> bool [1|h, n, m].

        full  allowed(i, j) = k_j <= q_i
        sink  sink_window_allowed(q_i, k_j, sink_tokens, window)
        s2    for queries q_i < P (the prompt; P = prompt_len): s2_allowed(q_i, k_j, G, s2_shift(h, H, G, P), sinks)
              with G = s2_group_size(P, s2_ratio), one row per head h in `heads` (global indices of H = total_heads);
              queries at or after P (generated tokens) attend causally to everything

    q_pos / k_pos are positions in vLLM (where a token's position is its index) and token indices in a
    training sequence; the caller chooses. Used by the served reference and the paged-KV path; the
    training path (method/attention.py) builds the same rules blockwise for sdpa.
    """
    qi, kj = q_pos[:, None], k_pos[None, :]
    if mode == "full":
        return (kj <= qi)[None]
    if mode == "sink":
        return sink_window_allowed(qi, kj, sink_tokens, window)[None]
    if mode == "s2":
        P = int(prompt_len if prompt_len is not None else q_pos.shape[0])
        G = s2_group_size(P, s2_ratio)
        per_head = torch.stack([s2_allowed(qi, kj, G, s2_shift(h, total_heads, G, P), sink_tokens)
                                for h in (heads if heads is not None else range(total_heads))])
        return torch.where((qi < P)[None], per_head, (kj <= qi)[None])
    raise ValueError(f"unknown attention mode {mode!r}")


def eager_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scaling: float, daa: tuple | None = None,
                    q_pos: Tensor | None = None, k_pos: Tensor | None = None) -> Tensor:
    """One sequence's attention, every step written out. q [H, n, d], k/v [Hkv, m, d], allowed bool [1|H, n, m].

        s[h, i, j] = scaling * q[h, i] . k[h // (H // Hkv), j]
        s          = daa_scores(s, q_pos, k_pos, head_scale, bucket_bias, max_position)   daa = (hs, bb, max_pos)
        out[h, i]  = softmax_j(s masked to allowed) @ v[kv(h)]        (scores and softmax in float32)

    Returns [H, n, d] in q's dtype. Masked scores are float32's lowest value, not -inf, so a query row
    with no allowed key (left padding) gives a finite mean of v instead of NaN; rows with one allowed key
    are unaffected (exp underflows to exactly 0).
    """
    rep = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(rep, dim=0), v.repeat_interleave(rep, dim=0)
    s = (q.float() @ k.float().transpose(-1, -2)) * scaling                          # [H, n, m]
    if daa is not None:
        head_scale, bucket_bias, max_position = daa
        s = daa_scores(s[None], q_pos[None], k_pos[None], head_scale.float(), bucket_bias.float(), max_position)[0]
    s = s.masked_fill(~allowed, torch.finfo(torch.float32).min)
    return (torch.softmax(s, dim=-1) @ v.float()).to(q.dtype)

