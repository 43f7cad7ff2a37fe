"""grouped_cpu (no engine): the grouped per-slot LoRA equals the per-token gather formulation and, token
by token, functional.served_linear; base tokens (vLLM index -1) get nothing; vLLM's own CPU op gives
them the last slot's delta (DESIGN.md §6), which the vLLM-path wrapper masks through p = 0."""
from __future__ import annotations

import pytest
import torch

from hylorada.functional import position_bucket, position_scale, served_linear
from hylorada_patches.grouped_cpu import grouped_lora_, reference_gather, scale_tokens_, views_of, vllm_lora_
from hylorada_patches.state import HyState

S, R, D_IN = 4, 8, 48
SLICES = (32, 16, 16)                         # a merged q/k/v with GQA


def stacks(seed=0):
    g = torch.Generator().manual_seed(seed)
    a = tuple(torch.randn(S, 1, R, D_IN, generator=g) for _ in SLICES)
    b = tuple(torch.randn(S, 1, n, R, generator=g) for n in SLICES)
    return a, b


def state_for(token_slots, positions, seed=0, min_group=2):
    g = torch.Generator().manual_seed(seed + 1)
    st = HyState(S, path="grouped", num_buckets=16, min_group=min_group)
    st.add_rows(len(SLICES))
    st.w_pos.copy_(torch.randn(st.w_pos.shape, generator=g))
    for s in (0, 2):                           # slots 0 and 2 have a position bias, 1 and 3 do not
        st.bias[s] = torch.randn(16, generator=g)
        st.cfg[s] = (16, 256)
    st.ranks = [R, 5, R, R]
    st.begin_step(positions, token_slots)
    return st


CASES = {
    "contiguous": [0, 0, 0, 1, 1, -1, -1, 2, 3, 3],
    "interleaved": [0, 1, 0, -1, 2, 1, 3, -1, 0, 2],
    "all_base": [-1] * 6,
    "one_slot": [3] * 7,
    "even_with_base": [0, 1, 2, 3, -1, 0, 1, 2, 3],      # small groups fill [G, Tmax]: base needs a zero row
    "two_of_four": [1, 3, 1, -1, 3],                     # some slots absent: weights gathered by slot
}


@pytest.mark.parametrize("min_group", [1, 2, 1000])   # all matmul groups / mixed / all gathered
@pytest.mark.parametrize("case", sorted(CASES))
def test_grouped_equals_gather_and_served_linear(case, min_group):
    slots = torch.tensor(CASES[case])
    T = slots.shape[0]
    pos = torch.arange(T) * 29 + 3            # crosses many buckets
    st = state_for(slots, pos, min_group=min_group)
    a, b = stacks()
    for s, r in enumerate(st.ranks):          # ranks below max are zero-padded, as vLLM stores them
        for ai, bi in zip(a, b):
            ai[s, 0, r:] = 0
            bi[s, 0, :, r:] = 0
    x = torch.randn(T, D_IN, generator=torch.Generator().manual_seed(7))
    rows = tuple(range(len(SLICES)))
    p_rows = [st.P[m] for m in rows] if st.P is not None else [torch.zeros(T)] * 3
    out = torch.zeros(T, sum(SLICES))
    grouped_lora_(out, x, views_of(a, b, st.ranks), SLICES, rows, st)       # each slot at its own rank
    torch.testing.assert_close(out, reference_gather(x, a, b, SLICES, p_rows, slots), rtol=1e-4, atol=1e-4)
    # the slow twin: the formula itself, one token at a time (W = 0 isolates the delta)
    for t in range(T):
        s = int(slots[t])
        if s < 0:
            assert out[t].abs().max() == 0
            continue
        off = 0
        for i, n in enumerate(SLICES):
            p = None
            if st.cfg[s] is not None:
                p = position_scale(st.bias[s], st.w_pos[i, s], position_bucket(pos[t], *st.cfg[s]))
            want = served_linear(x[t], torch.zeros(n, D_IN), None, a[i][s, 0], b[i][s, 0], None, p)
            torch.testing.assert_close(out[t, off:off + n], want, rtol=1e-4, atol=1e-4)
            off += n


@pytest.mark.parametrize("min_group", [1, 1000])                  # big groups / small layout
def test_views_that_leave_a_slice_untouched_add_nothing_there(min_group):
    """An adapter without weights for a slice (vLLM's set_lora gets None: e.g. q/v only on a merged q/k/v)
    holds None there; the delta equals vLLM's zero-filled stack, and the views are the tensors, not copies."""
    slots = torch.tensor(CASES["interleaved"])
    T = slots.shape[0]
    st = state_for(slots, torch.arange(T) * 17, min_group=min_group)
    a, b = stacks(3)
    views = views_of(a, b, st.ranks)
    for s in (1, 2):                                     # slot 1: no k; slot 2: no k and no v
        views[1][s] = None
        a[1][s], b[1][s] = 0, 0
    views[2][2] = None
    a[2][2], b[2][2] = 0, 0
    for s, r in enumerate(st.ranks):
        for ai, bi in zip(a, b):
            ai[s, 0, r:], bi[s, 0, :, r:] = 0, 0
    assert views[0][0][0].data_ptr() == a[0].data_ptr()             # slot 0, slice 0: a view of the stack
    x = torch.randn(T, D_IN, generator=torch.Generator().manual_seed(4))
    out = torch.zeros(T, sum(SLICES))
    grouped_lora_(out, x, views, SLICES, (0, 1, 2), st)
    want = reference_gather(x, a, b, SLICES, [st.P[m] for m in range(3)], slots)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)


LONG_RUNS = [0] * 40 + [-1] * 5 + [2] * 40 + [1] * 3 + [0] * 50       # prefill-like: c on each run's view


@pytest.mark.parametrize("case", ["interleaved", "contiguous", "long_runs"])
def test_scale_tokens_reads_ones_for_base_and_slots_without_c(case):
    slots = torch.tensor(LONG_RUNS if case == "long_runs" else CASES[case])
    st = state_for(slots, torch.arange(slots.shape[0]))
    assert st.long_runs == (case == "long_runs")
    c = torch.ones(S + 1, 8)
    c[1] = 2.0
    c[2] = 3.0
    out = torch.ones(slots.shape[0], 8)
    scale_tokens_(out, c, st, c_slots={1, 2} if case == "long_runs" else None)
    want = torch.tensor([2.0 if s == 1 else 3.0 if s == 2 else 1.0 for s in slots.tolist()])
    torch.testing.assert_close(out, want[:, None].expand(-1, 8))


class _Punica:
    """Just enough of PunicaWrapperCPU for decode: vLLM's own bgmv ops on token_lora_indices."""

    def __init__(self, idx):
        self.idx = idx

    def add_shrink(self, y, x, a_stacked, scale):
        from vllm.lora.ops.torch_ops import bgmv_shrink
        for yi, a in zip(y, a_stacked):
            bgmv_shrink(x, a, yi, self.idx, scale)

    def add_expand(self, y, x, b_stacked, output_slices, add_inputs=True):
        from vllm.lora.ops.torch_ops import bgmv_expand_slice
        off = 0
        for xi, b, n in zip(x, b_stacked, output_slices):
            bgmv_expand_slice(xi, b, y, self.idx, off, n, add_inputs)
            off += n


def test_vllm_path_masks_the_minus_one_wrap():
    slots = torch.tensor(CASES["interleaved"])
    st = state_for(slots, torch.arange(slots.shape[0]) * 7)
    a, b = stacks(1)
    x = torch.randn(slots.shape[0], D_IN, generator=torch.Generator().manual_seed(8))
    p_rows = [st.P[m] for m in range(3)]
    punica = _Punica(slots)
    stock = torch.zeros(slots.shape[0], sum(SLICES))
    punica.add_expand(stock, tuple(torch.einsum("td,trd->tr", x, ai[slots, 0]) for ai in a), b, SLICES)
    assert stock[slots == -1].abs().max() > 0          # vLLM 0.32: index -1 = the last slot's delta
    ours = torch.zeros_like(stock)
    vllm_lora_(punica, ours, x, a, b, SLICES, p_rows)
    assert ours[slots == -1].abs().max() == 0
    grouped = torch.zeros_like(stock)
    grouped_lora_(grouped, x, views_of(a, b, [R] * S), SLICES, (0, 1, 2), st)
    torch.testing.assert_close(ours, grouped, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", ["grouped", "vllm"])
@pytest.mark.parametrize("case", ["interleaved", "even_with_base", "two_of_four", "contiguous"])
def test_a_non_finite_token_reaches_no_other_token(case, path):
    """One token's hidden state is inf/NaN (its adapter's values were finite but absurd, so an earlier layer
    overflowed): every other token's delta is still exactly its own. Before, the small-group layout padded
    with a copy of a real token and relied on P = 0 to zero the padding (inf * 0 = NaN), and every token
    outside the small groups (base tokens, big groups) read that padding row; the vLLM path masked base
    tokens the same way."""
    slots = torch.tensor(CASES[case])
    T = slots.shape[0]
    st = state_for(slots, torch.arange(T) * 13, min_group=1000)    # every adapter token in the small layout
    st.ranks = [R] * S
    a, b = stacks(2)
    x = torch.randn(T, D_IN, generator=torch.Generator().manual_seed(9))
    lowest = int(slots[slots >= 0].min())
    bad = int((slots == lowest).nonzero()[0])              # the token the layout's padding used to repeat
    clean = torch.zeros(T, sum(SLICES))
    views = views_of(a, b, [R] * S)
    grouped_lora_(clean, x, views, SLICES, (0, 1, 2), st)
    x[bad, 0], x[bad, 1] = float("inf"), float("nan")
    out = torch.zeros(T, sum(SLICES))
    if path == "grouped":
        grouped_lora_(out, x, views, SLICES, (0, 1, 2), st)
    else:
        vllm_lora_(_Punica(slots), out, x, a, b, SLICES, [st.P[m] for m in range(3)])
    others = torch.arange(T) != bad
    assert torch.isfinite(out[others]).all(), f"non-finite values reached tokens {(~torch.isfinite(out)).any(1).nonzero().tolist()}"
    torch.testing.assert_close(out[others], clean[others], rtol=1e-4, atol=1e-4)


def test_batch_stacks_kept_across_steps_equal_stacking_anew():
    """One HyState (its RowMap) and one layer's stacks.SliceStack per slice over decode steps whose adapters join,
    leave and get replaced in their slot: every step's delta equals the reference twin's (stacked anew), exactly."""
    from hylorada_patches.stacks import SliceStack
    a, b = stacks(5)
    st = HyState(S, path="grouped", num_buckets=16, min_group=1000)
    st.add_rows(len(SLICES))
    st.w_pos.copy_(torch.randn(st.w_pos.shape, generator=torch.Generator().manual_seed(6)))
    views = views_of(a, b, [R, 5, R, 3])
    layer_stacks = tuple(SliceStack() for _ in SLICES)
    g = torch.Generator().manual_seed(11)
    for step, slots in enumerate([[0, 1, 2], [2, 0, 1], [0, 1, 2, 3, -1], [3, -1, 0], [1, 3], [1, 3, 2, 0]]):
        if step == 4:                                    # slot 1 gets another adapter, slot 3 loses slice 2
            views[0][1] = (torch.randn(R, D_IN, generator=g), torch.randn(SLICES[0], R, generator=g))
            views[2][3] = None
        slots = torch.tensor(slots)
        st.begin_step(torch.arange(slots.shape[0]) * 11 + step, slots)
        x = torch.randn(slots.shape[0], D_IN, generator=g)
        kept, anew = torch.zeros(slots.shape[0], sum(SLICES)), torch.zeros(slots.shape[0], sum(SLICES))
        grouped_lora_(kept, x, views, SLICES, (0, 1, 2), st, layer_stacks)
        grouped_lora_(anew, x, views, SLICES, (0, 1, 2), st)
        assert torch.equal(kept, anew), step
        st.end_step()
