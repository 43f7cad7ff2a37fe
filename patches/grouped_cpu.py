"""The LoRA kernels of both paths (lora_path.py picks one per engine): a grouped multi-adapter LoRA for the CPU,
and vLLM's own punica ops with p(pos) and the base-token mask; plus c's per-token scaling and a slow twin.

vLLM 0.32's CPU punica ops (vllm/lora/ops/torch_ops/lora_ops.py: bgmv_shrink/bgmv_expand) gather a
full copy of every token's LoRA weights, `lora_b_weights[indices]` -> [T, r, d], before an einsum:
memory traffic proportional to tokens x weights. Here tokens are grouped by slot once per step
(HyState.groups) and each (slot, module slice) with enough tokens is one shrink and one expand matmul;
the few tokens of small groups (decode steps) are laid out [adapters, Tmax] once per step (SmallPlan) and
share one batched matmul pair per slice, so Python work per layer does not grow with the number of adapters.

The grouped path reads each slot's weights where they already live (`views`: the engine's cached LoRA tensors,
layers.py): a slot costs no memory, so --max-loras can be hundreds (issue 18). Semantics of `grouped_lora_`
(the plain loop it equals; base tokens are in no group):

    for (s, tokens) in groups:
        for t in tokens:
            for i, (off, n) in enumerate(slices):
                A, B = views[i][s]                          # [r, d_in], [n, r]; None -> no delta
                out[t, off:off+n] += P[rows[i], t] * (x[t] @ A.T) @ B.T

`vllm_lora_` is the other path (vLLM's punica ops on its slot stacks, p and the base-token mask on the rank-r buffer);
lora_path.py wraps each in one implementation, chosen per engine (HYLORADA_LORA_PATH or the
`hylorada_lora_path` worker RPC, control.py).
"""
from __future__ import annotations

import torch
from torch import Tensor


def grouped_lora_(out: Tensor, x: Tensor, views, output_slices, rows, state, stacks=None) -> None:
    """out [T, sum(slices)] += every adapter token's LoRA delta (in place).

    x [T, d_in]; views[i][s]: slot s's weights of slice i where they already live (layers.py keeps references to
    the engine's cached LoRA tensors, no per-slot copy): (A [r, d_in], B [n_i, r]) with the adapter's own rank r,
    or None when the adapter leaves slice i untouched (its delta is 0). rows[i]: slice i's row in state.P (p(pos)
    [T], 0 for base tokens); state: HyState of the step. stacks[i]: the layer's stacks.SliceStack of slice i (the
    small groups' weights kept across steps); None: stacked anew (stack_slots, the reference twin).
    A `big` group: one shrink matmul for all its slices (A_i concatenated), the rank-r buffer scaled by p, one fused
    expand-and-add (addmm_) per slice into the output view — i.e. functional.lora_delta fused with the add.
    Tokens of small groups (decode: a few tokens per adapter) go through `small_delta_`: per slice one
    batched matmul pair over all their adapters — Python work per layer does not grow with the tokens.
    """
    offs = _offsets(output_slices)
    for s, g in state.big:
        present = [(i, views[i][s]) for i in range(len(output_slices)) if views[i][s] is not None]
        if not present:
            continue
        A = torch.cat([a for _, (a, _) in present]) if len(present) > 1 else present[0][1][0]
        h = x[g] @ A.t().to(x.dtype)                                        # [n_g, sum of the slices' ranks]
        contiguous = isinstance(g, slice)
        target = out[g] if contiguous else torch.zeros(h.shape[0], out.shape[1], dtype=out.dtype, device=out.device)
        col = 0
        for i, (a, b) in present:
            r = a.shape[0]
            hi = h[:, col:col + r] * state.P[rows[i]][g].unsqueeze(1).to(h.dtype)
            target[:, offs[i]:offs[i] + output_slices[i]].addmm_(hi.to(out.dtype), b.t().to(out.dtype))
            col += r
        if not contiguous:
            out.index_add_(0, g, target)
    if state.pad is not None:
        small_delta_(out, x, views, output_slices, rows, state.pad, stacks)


def small_delta_(out: Tensor, x: Tensor, views, output_slices, rows, plan, stacks=None) -> None:
    """out[t] += delta of every token t of a small group (state.SmallPlan `plan`), per slice i:

        A, Bt = stacks[i].rows(views[i], plan.slot_list)                 [G, R, d_in], [G, R, n_i]
        h = bmm(x[idx] viewed [G, Tmax, d_in], A^T) * P_i                [G, Tmax, R]   (set to 0 on padding)
        out[:, slice i] += bmm(h, Bt) viewed [G*Tmax, n_i] [inv]

    Each token meets only its own adapter's weights (FLOPs ~ G*Tmax rows, not T x every slot), in 6 tensor
    ops per slice whatever the number of adapters; tokens outside the small groups read a zero row."""
    G, Tmax = plan.G, plan.Tmax
    xg = x.index_select(0, plan.idx).view(G, Tmax, x.shape[1])
    offs = _offsets(output_slices)
    for i, n in enumerate(output_slices):
        A, Bt = (stack_slots(views[i], plan.slot_list, x.shape[1], n) if stacks is None
                 else stacks[i].rows(views[i], plan.slot_list, x.shape[1], n))
        if A is None:                                                       # no small adapter touches slice i
            continue
        h = torch.bmm(xg, A.transpose(1, 2).to(xg.dtype))
        h.mul_(plan.P[rows[i]].view(G, Tmax, 1).to(h.dtype)).masked_fill_(plan.pad, 0)   # padding: exact 0, even from inf
        d = torch.bmm(h, Bt.to(h.dtype)).view(G * Tmax, n)
        out[:, offs[i]:offs[i] + n].add_(d.index_select(0, plan.inv).to(out.dtype))


def stack_slots(pairs, slots: list[int], d_in: int, n: int) -> tuple[Tensor | None, Tensor | None]:
    """The reference twin of stacks.SliceStack.rows (stacked anew each call). One slice's weights of `slots` as
    batches: A [G, R, d_in] (contiguous) and B^T [G, R, n] (the transposed view
    of a contiguous B stack [G, n, R]), R the largest rank among them, smaller ranks and untouched slots (None)
    zero-padded, as vLLM pads its slot stacks. (None, None) when no slot has weights for the slice. One copy of the
    G adapters' weights, like the gather it replaces. B is copied row-contiguous and bmm reads the transpose: a
    stack of the transposed views `b.t()` was a strided copy, 2.5-4x slower (aten::cat was 28 % of a decode step
    with 16 distinct adapters)."""
    got = [pairs[s] for s in slots]
    live = [p for p in got if p is not None]
    if not live:
        return None, None
    R = max(a.shape[0] for a, _ in live)
    if len(live) == len(got) and all(a.shape[0] == R for a, _ in live):
        return torch.stack([a for a, _ in got]), torch.stack([b for _, b in got]).transpose(1, 2)
    a0 = live[0][0]
    A = torch.zeros(len(got), R, d_in, dtype=a0.dtype, device=a0.device)
    B = torch.zeros(len(got), n, R, dtype=a0.dtype, device=a0.device)
    for k, p in enumerate(got):
        if p is not None:
            r = p[0].shape[0]
            A[k, :r] = p[0]
            B[k, :, :r] = p[1]
    return A, B.transpose(1, 2)


def _offsets(output_slices) -> list[int]:
    offs, o = [], 0
    for n in output_slices:
        offs.append(o)
        o += n
    return offs


def views_of(a_stacked, b_stacked, ranks) -> tuple[list, ...]:
    """The views of slot stacks (a_stacked[i] [S, 1, R, d_in], b_stacked[i] [S, 1, n_i, R]) with per-slot ranks
    (0 = empty slot -> None): what layers.py holds, built from vLLM's layout (tests, benchmarks)."""
    return tuple([None if not r else (a[s, 0, :r], b[s, 0, :, :r]) for s, r in enumerate(ranks)]
                 for a, b in zip(a_stacked, b_stacked))


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
