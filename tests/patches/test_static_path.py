"""static_path.py: the served path a graph can hold (DESIGN.md §4.1, docs/gpu.md). No engine (tests/patches/test_engine.py
serves through it on a real one).

  - the per-slot bucketing is functional.position_bucket's, integer for integer;
  - a stack of static served layers equals the per-token loop (functional.served_linear), base and padding included;
  - compiled with torch.compile(fullgraph=True) under vLLM's guard policy (every guard dropped), it equals eager while
    slots, positions, token count, adapter weights, c, w_pos, the position bias and bucket settings change in place
    between calls — and the same checker fails a layer written like the grouped path (Python over the step's groups);
  - the step's preparation and the forward never synchronise with the host (a torch function mode that raises),
    and the same mode catches the grouped path's planning.
"""
from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from bench.kernels.static_stack import C, S, GroupedLike, Stack, max_diffs
from hylorada.functional import log_bucket, position_bucket
from hylorada_patches.state import HyState
from hylorada_patches.static_path import StaticTables, step_inputs

TOL = 1e-5


def test_log_bucket_per_slot_is_position_bucket():
    pos = torch.arange(0, 70000)
    settings = [(4, 5), (16, 128), (16, 256), (64, 32768), (64, 4096), (128, 100000)]
    half = torch.tensor([nb // 2 for nb, _ in settings])
    top = torch.tensor([nb - 1 for nb, _ in settings])
    import math
    log_range = torch.tensor([math.log(mp / (nb // 2)) for nb, mp in settings], dtype=torch.float64)
    which = torch.arange(pos.numel()) % len(settings)
    got = log_bucket(pos, half[which], top[which], log_range[which])
    for k, (nb, mp) in enumerate(settings):
        sel = which == k
        assert torch.equal(got[sel], position_bucket(pos[sel], nb, mp)), (nb, mp)


def steps_of(stack: Stack, n: int, seed: int, before=None):
    """n step preparations: the first base-only (what a trace on a profile batch sees), the rest mixed."""
    g = torch.Generator().manual_seed(seed)

    def prepare(base_only):
        def run():
            x = stack.rewrite(g, base_only)
            if before is not None:
                before()
            return x
        return run
    return [prepare(i == 0) for i in range(n)]


def test_static_stack_equals_the_per_token_loop():
    stack = Stack.build()
    diffs = max_diffs(stack.forward, stack.loop, steps_of(stack, 6, seed=1))
    assert max(diffs) < TOL, diffs


def test_tables_refuse_what_they_cannot_hold_and_never_reallocate():
    t = StaticTables.allocate(2, 8, num_buckets=16)
    ptrs = [x.data_ptr() for x in (t.bias, t.slots, t.positions, t.half, t.log_range)]
    with pytest.raises(ValueError, match="does not fit the engine's table of 16 buckets"):
        t.write_slot(0, torch.zeros(32), 32, 256)
    with pytest.raises(ValueError, match="9 token slots .* tables of 8 tokens"):
        t.set_mapping(torch.zeros(9, dtype=torch.long), torch.zeros(9, dtype=torch.long))
    t.write_slot(1, torch.ones(8), 8, 64)
    t.set_mapping(torch.tensor([1, -1, 0]), torch.tensor([5, 6, 7]))
    assert t.slots.tolist() == [1, 2, 0, 2, 2, 2, 2, 2] and t.positions.tolist() == [5, 6, 7, 0, 0, 0, 0, 0]
    assert ptrs == [x.data_ptr() for x in (t.bias, t.slots, t.positions, t.half, t.log_range)]
    st = HyState(2)                                      # the engine state's bias is the tables' (never torch.cat)
    bias = st.bias
    assert bias is st.tables.bias and st.bias.shape[1] >= 64


def compile_like_vllm(fn):
    """What vLLM 0.33's VLLM_COMPILE asks of Dynamo: one graph, static shapes, every guard dropped
    (vllm/compilation/wrapper.py); aot_eager keeps the AOT/functionalization step without a C++ compiler."""
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, dynamic=False, backend="aot_eager",
                         options={"guard_filter_fn": torch.compiler.skip_all_guards_unsafe})


def test_compiled_stack_equals_eager_under_vllm_guard_policy():
    stack = Stack.build()
    tensors = [stack.tables.bias, stack.tables.w_pos, stack.tables.slots, stack.tables.positions] + \
        [L.hy_c for L in stack.layers] + [a for L in stack.layers for a in L.lora_a_stacked]
    ptrs = [t.data_ptr() for t in tensors]
    compiled = compile_like_vllm(stack.forward)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    seen_n, seen_slots = set(), set()

    def note():
        seen_n.add(stack.n)
        seen_slots.update(stack.tables.slots.tolist())
    diffs = max_diffs(compiled, stack.forward, steps_of(stack, 10, seed=2, before=note))
    assert max(diffs) < TOL, diffs
    assert len(seen_n) >= 5 and seen_slots == set(range(S + 1))          # token counts and every slot did vary
    assert ptrs == [t.data_ptr() for t in tensors]                       # all writes were in place
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1     # one trace served every step


def test_the_checker_fails_a_step_dependent_layer():
    """The negative control: the grouped path's shape (groups planned in Python, layers looping over them) is
    right eagerly, and wrong once compiled under the same policy — the trace on a base-only step baked 'no groups'."""
    stack = Stack.build()
    control = GroupedLike(stack)
    eager_ok = max_diffs(control.forward, stack.forward, steps_of(stack, 4, seed=3, before=control.plan))
    assert max(eager_ok) < TOL, eager_ok
    compiled = compile_like_vllm(control.forward)
    diffs = max_diffs(compiled, control.forward, steps_of(stack, 6, seed=3, before=control.plan))
    assert diffs[0] < TOL and max(diffs[1:]) > 1e-2, diffs
    torch._dynamo.reset()                  # with Dynamo's guards kept it recompiles and is right: the policy is the hazard
    guarded = torch.compile(control.forward, fullgraph=True, dynamic=False, backend="aot_eager")
    diffs = max_diffs(guarded, control.forward, steps_of(stack, 4, seed=5, before=control.plan))
    assert max(diffs) < TOL, diffs


class HostSync(AssertionError):
    pass


class NoHostSync(TorchFunctionMode):
    """Raises on anything that reads a tensor's values back to the host or whose output shape depends on them
    (a sync on CUDA): item/tolist/bool/int/float, nonzero, unique, masked_select, boolean-mask indexing."""
    BANNED = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
              torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.numpy, torch.Tensor.nonzero, torch.nonzero,
              torch.Tensor.unique, torch.unique, torch.unique_consecutive, torch.Tensor.unique_consecutive,
              torch.masked_select, torch.Tensor.masked_select, torch.argwhere, torch.Tensor.any, torch.Tensor.all}
    INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.BANNED:
            raise HostSync(getattr(func, "__name__", str(func)))
        if func in self.INDEXING:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index):
                raise HostSync("boolean-mask indexing")
        return func(*args, **(kwargs or {}))


def test_step_preparation_and_forward_never_sync_with_the_host():
    stack = Stack.build()
    g = torch.Generator().manual_seed(4)
    slots, positions = torch.randint(-1, S, (C - 3,), generator=g), torch.randint(0, 5000, (C - 3,), generator=g)
    x = torch.randn(C, 16, generator=g)
    with NoHostSync():
        stack.tables.set_mapping(slots, positions)
        step = step_inputs(stack.tables)
        y = stack.forward(x)
    assert step.flat.shape == (C,) and y.shape == (C, 16)
    # the checker catches a sync: the grouped path's planning (HyState.begin_step) makes several
    st = HyState(S, path="grouped")
    st.add_rows(1)
    with pytest.raises(HostSync), NoHostSync():
        st.begin_step(positions, slots)
    with pytest.raises(HostSync), NoHostSync():
        bool(slots.sum())


def test_static_engine_state_step_is_planned_on_base_only_steps_too():
    """HyState on the static path: every step (base-only included) writes the mapping and keeps its Step."""
    st = HyState(2, path="static", max_tokens=8)
    st.add_rows(1)
    st.begin_step(torch.arange(3), torch.tensor([-1, -1, -1]))
    assert st.groups == [] and st.step is not None and st.tables.slots.tolist() == [2] * 8
    st.begin_step(torch.arange(4), torch.tensor([1, -1, 0, 1]))
    assert st.present == {0, 1} and st.tables.slots[:4].tolist() == [1, 2, 0, 1]
    st.end_step()
    assert st.step is None
