"""The LoRA kernels of both paths (lora_path.py picks one per engine): a grouped multi-adapter LoRA for the CPU,
and vLLM's own punica ops with p(pos) and the base-token mask; plus c's per-token scaling and a slow twin.

vLLM 0.32's CPU punica ops (vllm/lora/ops/torch_ops/lora_ops.py: bgmv_shrink/bgmv_expand) gather a
full copy of every token's LoRA weights, `lora_b_weights[indices]` -> [T, r, d], before an einsum:
memory traffic proportional to tokens x weights. Here tokens are grouped by slot once per step
(HyState.groups) and each (slot, module slice) with enough tokens is one shrink and one expand matmul;
the few tokens of small groups (decode steps) are laid out [adapters, Tmax] once per step (SmallPlan) and
share one batched matmul pair per slice, so Python work per layer does not grow with the number of adapters.

Semantics of `grouped_lora_` (the plain loop it equals; base tokens are in no group):

    for (s, tokens) in groups:
        for t in tokens:
            for i, (off, n) in enumerate(slices):
                out[t, off:off+n] += P[rows[i], t] * (x[t] @ A_i[s, 0, :r].T) @ B_i[s, 0, :, :r].T

`vllm_lora_` is the other path (vLLM's punica ops, p and the base-token mask on the rank-r buffer);
lora_path.py wraps each in one implementation, chosen per engine (HYLORADA_LORA_PATH or the
`hylorada_lora_path` worker RPC, control.py).
"""
from __future__ import annotations

import torch
from torch import Tensor


def grouped_lora_(out: Tensor, x: Tensor, a_stacked, b_stacked, output_slices, rows, state, bt_stacked=None) -> None:
    """out [T, sum(slices)] += every adapter token's LoRA delta (in place).

    x [T, d_in]; a_stacked[i] [S, 1, R, d_in], b_stacked[i] [S, 1, n_i, R]; rows[i]: slice i's row in
    state.P (p(pos) [T], 0 for base tokens); state: HyState of the step; bt_stacked[i] (optional) = B_i
    transposed, [S*R, n_i] contiguous (the layer keeps it in sync; the expand matmul is ~2x faster on it).
    A `big` group: one shrink matmul for all slices (A_i stacked), the rank-r buffer scaled by p, one fused
    expand-and-add (addmm_) per slice into the output view — i.e. functional.lora_delta fused with the add.
    Tokens of small groups (decode: a few tokens per adapter) go through `small_delta_`: per slice one
    batched matmul pair over all their adapters — Python work per layer does not grow with the adapters.
    """
    for s, g in state.big:
        r = state.ranks[s] or a_stacked[0].shape[2]
        A = torch.cat([a[s, 0, :r] for a in a_stacked]) if len(a_stacked) > 1 else a_stacked[0][s, 0, :r]
        h = x[g] @ A.t()                                                    # [n_g, slices * r]
        contiguous = isinstance(g, slice)
        deltas, off = [], 0
        for i, n in enumerate(output_slices):
            hi = h[:, i * r:(i + 1) * r] * state.P[rows[i]][g].unsqueeze(1).to(h.dtype)
            B = b_stacked[i][s, 0, :, :r]
            if contiguous:
                out[g, off:off + n].addmm_(hi.to(out.dtype), B.t().to(out.dtype))
            else:
                deltas.append(hi @ B.t())
            off += n
        if not contiguous:
            out.index_add_(0, g, torch.cat(deltas, 1).to(out.dtype))
    if state.pad is not None:
        small_delta_(out, x, a_stacked, b_stacked, output_slices, rows, state.pad, bt_stacked)


def small_delta_(out: Tensor, x: Tensor, a_stacked, b_stacked, output_slices, rows, plan, bt_stacked=None) -> None:
    """out[t] += delta of every token t of a small group (state.SmallPlan `plan`), per slice i:

        h = bmm(x[idx] viewed [G, Tmax, d_in], A_i[slots]^T) * P_i        [G, Tmax, R]   (set to 0 on padding)
        out[:, slice i] += bmm(h, B_i[slots]^T) viewed [G*Tmax, n_i] [inv]

    Each token meets only its own adapter's weights (FLOPs ~ G*Tmax rows, not T x every slot), in 5 tensor
    ops per slice whatever the number of adapters; tokens outside the small groups read a zero row."""
    G, Tmax = plan.G, plan.Tmax
    xg = x.index_select(0, plan.idx).view(G, Tmax, x.shape[1])
    off = 0
    for i, n in enumerate(output_slices):
        a = a_stacked[i][:, 0]                                              # [S, R, d_in]
        S, R = a.shape[0], a.shape[1]
        bt = b_stacked[i][:, 0].transpose(1, 2) if bt_stacked is None else bt_stacked[i].view(S, R, n)
        if not plan.all_slots:
            a, bt = a.index_select(0, plan.slots), bt.index_select(0, plan.slots)
        h = torch.bmm(xg, a.transpose(1, 2))
        h.mul_(plan.P[rows[i]].view(G, Tmax, 1).to(h.dtype)).masked_fill_(plan.pad, 0)   # padding: exact 0, even from inf
        d = torch.bmm(h, bt).view(G * Tmax, n)
        out[:, off:off + n].add_(d.index_select(0, plan.inv).to(out.dtype))
        off += n


def vllm_lora_(punica, out: Tensor, x: Tensor, a_stacked, b_stacked, output_slices, p_rows) -> None:
    """vLLM's own path: punica add_shrink (per-token weight gather) -> buffer *= p (0 for base tokens,
    which masks the -1 -> last-slot wrap) -> punica add_expand."""
    r = b_stacked[0].shape[-1]
    buffer = tuple(torch.zeros((x.shape[0], r), dtype=torch.float32, device=x.device) for _ in output_slices)
    punica.add_shrink(buffer, x, a_stacked, 1.0)
    for b, p in zip(buffer, p_rows):
        b.mul_(p.unsqueeze(1)).masked_fill_((p == 0).unsqueeze(1), 0)   # base tokens: exact 0 even if x.A overflowed
    punica.add_expand(out, buffer, b_stacked, output_slices, add_inputs=True)


def scale_tokens_(out: Tensor, c: Tensor, state, c_slots=None) -> None:
    """out[t] *= c[slot(t)] (in place); base tokens and slots without a c keep 1.

    Prefill-heavy steps (long runs of one adapter's tokens): a multiply on each run's view; otherwise
    (decode) one gather c[slot_all] (base tokens read row S = ones) and one multiply.
    """
    if state.long_runs:
        for s, g in state.runs:
            if c_slots is None or s in c_slots:
                out[g] *= c[s].to(out.dtype)
    else:
        out.mul_(c[state.slot_all].to(out.dtype))


def reference_gather(x: Tensor, a_stacked, b_stacked, output_slices, p_rows, token_slots: Tensor) -> Tensor:
    """The slow twin (vLLM's gather formulation, masked): delta [T, sum(slices)] for tests."""
    outs = []
    safe = token_slots.clamp_min(0)
    for i, n in enumerate(output_slices):
        A = a_stacked[i][safe, 0]                                   # [T, R, d_in]
        B = b_stacked[i][safe, 0]                                   # [T, n, R]
        h = torch.einsum("td,trd->tr", x, A) * (p_rows[i] * (token_slots >= 0)).unsqueeze(1)
        outs.append(torch.einsum("tr,tnr->tn", h, B))
    return torch.cat(outs, 1)
