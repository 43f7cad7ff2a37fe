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
base-token mask applied to the rank-r buffer).
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

from hylorada.functional import lora_delta

PATHS = ("grouped", "vllm")


def selected_path() -> str:
    """The LoRA path this process uses (env HYLORADA_LORA_PATH; default grouped)."""
    path = os.environ.get("HYLORADA_LORA_PATH", "grouped")
    if path not in PATHS:
        raise ValueError(f"HYLORADA_LORA_PATH must be one of {PATHS} (got {path!r})")
    return path


def grouped_lora_(out: Tensor, x: Tensor, a_stacked, b_stacked, output_slices, p_rows, state) -> None:
    """out [T, sum(slices)] += every adapter token's LoRA delta (in place).

    x [T, d_in]; a_stacked[i] [S, 1, R, d_in], b_stacked[i] [S, 1, n_i, R]; p_rows[i] [T] (0 for base tokens);
    state: HyState of the step — `big` groups get one shrink + one expand matmul each (functional.lora_delta),
    the tokens of small groups (decode: a few tokens per adapter) one gathered einsum together, so a
    step costs O(#big groups) Python calls, not O(#adapters).
    """
    for s, g in state.big:
        r = state.ranks[s] or a_stacked[0].shape[2]
        xs = x[g]
        deltas = [lora_delta(xs, a_stacked[i][s, 0, :r], b_stacked[i][s, 0, :, :r], 1.0, p_rows[i][g])
                  for i in range(len(output_slices))]
        if isinstance(g, slice):
            off = 0
            for d, n in zip(deltas, output_slices):
                out[g, off:off + n] += d.to(out.dtype)
                off += n
        else:
            out.index_add_(0, g, torch.cat(deltas, 1).to(out.dtype))
    if state.small_idx is not None:
        idx, slots = state.small_idx, state.small_slots
        p_small = [p[idx] for p in p_rows]
        out.index_add_(0, idx, gathered_delta(x[idx], a_stacked, b_stacked, p_small, slots).to(out.dtype))


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
    buffer = tuple(torch.zeros((x.shape[0], r), dtype=torch.float32) for _ in output_slices)
    punica.add_shrink(buffer, x, a_stacked, 1.0)
    for b, p in zip(buffer, p_rows):
        b.mul_(p.unsqueeze(1))
    punica.add_expand(out, buffer, b_stacked, output_slices, add_inputs=True)


def scale_tokens_(out: Tensor, c: Tensor, slot_all: Tensor) -> None:
    """out[t] *= c[slot_all[t]] (in place): one gather + multiply per layer; base tokens and slots
    without a c read rows of ones."""
    out.mul_(c[slot_all].to(out.dtype))


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
