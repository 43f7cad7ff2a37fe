"""A grouped multi-adapter LoRA path for the CPU, and vLLM's own path, behind one switch.

vLLM 0.32's CPU punica ops (vllm/lora/ops/torch_ops/lora_ops.py: bgmv_shrink/bgmv_expand) gather a
full copy of every token's LoRA weights, `lora_b_weights[indices]` -> [T, r, d], before an einsum:
memory traffic proportional to tokens x weights. Here tokens are grouped by slot once per step
(HyState.groups) and each (slot, module slice) with enough tokens is one shrink and one expand matmul;
the few tokens of small groups (decode steps) share one gathered einsum (vLLM's formulation, restricted
to those tokens and masked), so Python work per layer does not grow with the number of adapters.

Semantics of `grouped_lora_` (the plain loop it equals; base tokens are in no group):

    for (s, tokens) in groups:
        for t in tokens:
            for i, (off, n) in enumerate(slices):
                out[t, off:off+n] += p_rows[i][t] * (x[t] @ A_i[s, 0, :r].T) @ B_i[s, 0, :, :r].T

Selected by HYLORADA_LORA_PATH=grouped (default on CPU) | vllm (vLLM's punica ops, with p and the
base-token mask applied to the rank-r buffer; default elsewhere), or at run time per engine through the
`hylorada_lora_path` worker RPC (control.py).
"""
from __future__ import annotations

import os

import torch
from torch import Tensor


PATHS = ("grouped", "vllm")


def selected_path(is_cpu: bool = True) -> str:
    """The LoRA path this process uses: env HYLORADA_LORA_PATH, else grouped on the CPU and vLLM's own
    (its Triton punica kernels) elsewhere — the grouped path is verified on the CPU only."""
    path = os.environ.get("HYLORADA_LORA_PATH", "grouped" if is_cpu else "vllm")
    if path not in PATHS:
        raise ValueError(f"HYLORADA_LORA_PATH must be one of {PATHS} (got {path!r})")
    return path


def grouped_lora_(out: Tensor, x: Tensor, a_stacked, b_stacked, output_slices, p_rows, state, bt_stacked=None) -> None:
    """out [T, sum(slices)] += every adapter token's LoRA delta (in place).

    x [T, d_in]; a_stacked[i] [S, 1, R, d_in], b_stacked[i] [S, 1, n_i, R]; p_rows[i] [T] (0 for base tokens);
    state: HyState of the step. A `big` group: one shrink matmul for all slices (A_i stacked), the rank-r
    buffer scaled by p, one fused expand-and-add (addmm_) per slice into the output view — i.e.
    functional.lora_delta fused with the add; tokens of small groups (decode: a few tokens per adapter)
    share one dense pass over all slots (`dense_delta`, with bt_stacked[i] = B_i transposed [S*R, n_i])
    or, without bt_stacked, one gathered einsum — Python work per layer does not grow with the adapters.
    """
    for s, g in state.big:
        r = state.ranks[s] or a_stacked[0].shape[2]
        A = torch.cat([a[s, 0, :r] for a in a_stacked]) if len(a_stacked) > 1 else a_stacked[0][s, 0, :r]
        h = x[g] @ A.t()                                                    # [n_g, slices * r]
        contiguous = isinstance(g, slice)
        deltas, off = [], 0
        for i, n in enumerate(output_slices):
            hi = h[:, i * r:(i + 1) * r] * p_rows[i][g].unsqueeze(1).to(h.dtype)
            B = b_stacked[i][s, 0, :, :r]
            if contiguous:
                out[g, off:off + n].addmm_(hi.to(out.dtype), B.t().to(out.dtype))
            else:
                deltas.append(hi @ B.t())
            off += n
        if not contiguous:
            out.index_add_(0, g, torch.cat(deltas, 1).to(out.dtype))
    if state.small_idx is not None:
        idx, slots = state.small_idx, state.small_slots
        p_small = [p[idx] for p in p_rows]
        d = gathered_delta(x[idx], a_stacked, b_stacked, p_small, slots) if bt_stacked is None else \
            dense_delta(x[idx], a_stacked, bt_stacked, p_small, slots)
        out.index_add_(0, idx, d.to(out.dtype))


def dense_delta(x: Tensor, a_stacked, bt_stacked, p_rows, slots: Tensor) -> Tensor:
    """Same result as gathered_delta without copying any weights: shrink against every slot at once
    (A_i viewed as [S*R, d_in]), keep only each token's own slot block scaled by p, expand against the
    transposed B stack [S*R, n_i]. Costs like a rank S*R LoRA: for the few tokens of small groups."""
    outs = []
    t = x.shape[0]
    rows = torch.arange(t, device=x.device)
    for a, bt, p in zip(a_stacked, bt_stacked, p_rows):
        S, R = a.shape[0], a.shape[2]
        h = (x @ a.view(S * R, a.shape[3]).t()).view(t, S, R)
        mask = torch.zeros(t, S, dtype=h.dtype, device=x.device)
        mask[rows, slots] = p.to(h.dtype)
        outs.append((h * mask.unsqueeze(2)).view(t, S * R) @ bt)
    return torch.cat(outs, 1)


def gathered_delta(x: Tensor, a_stacked, b_stacked, p_rows, slots: Tensor) -> Tensor:
    """delta [t, sum(slices)] with each token's own slot weights gathered (slots >= 0 here):
    delta[t, slice i] = p_rows[i][t] * (x[t] @ A_i[slots[t]]^T) @ B_i[slots[t]]^T."""
    outs = []
    for a, b, p in zip(a_stacked, b_stacked, p_rows):
        h = torch.einsum("td,trd->tr", x, a[slots, 0]) * p.unsqueeze(1).to(x.dtype)
        outs.append(torch.einsum("tr,tnr->tn", h, b[slots, 0]))
    return torch.cat(outs, 1)


def vllm_lora_(punica, out: Tensor, x: Tensor, a_stacked, b_stacked, output_slices, p_rows) -> None:
    """vLLM's own path: punica add_shrink (per-token weight gather) -> buffer *= p (0 for base tokens,
    which masks the -1 -> last-slot wrap) -> punica add_expand."""
    r = b_stacked[0].shape[-1]
    buffer = tuple(torch.zeros((x.shape[0], r), dtype=torch.float32, device=x.device) for _ in output_slices)
    punica.add_shrink(buffer, x, a_stacked, 1.0)
    for b, p in zip(buffer, p_rows):
        b.mul_(p.unsqueeze(1))
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
