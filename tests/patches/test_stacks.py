"""stacks.SliceStack (no engine): across steps whose adapters join, leave, move rows, change rank, lack the slice or
are replaced in their slot, its rows equal the reference twin grouped_cpu.stack_slots (stacked anew) bit for bit,
and only the rows whose adapter changed are written."""
from __future__ import annotations

import gc

import torch

from hylorada_patches.grouped_cpu import stack_slots
from hylorada_patches.stacks import SliceStack
from hylorada_patches.state import RowMap

D_IN, N, SLOTS = 12, 10, 6


def pair(seed: int, r: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, D_IN, generator=g), torch.randn(N, r, generator=g)


def counted(stack: SliceStack) -> list:
    writes = []
    orig = stack._write
    stack._write = lambda g, p: (writes.append(g), orig(g, p))[1]
    return writes


def check(stack, rows, pairs, step_slots):
    order = rows.assign(step_slots)
    assert sorted(order) == sorted(step_slots)
    A, Bt = stack.rows(pairs, order, D_IN, N)
    A0, Bt0 = stack_slots(pairs, order, D_IN, N)
    assert (A is None) == (A0 is None)
    if A is not None:
        assert torch.equal(A, A0) and torch.equal(Bt, Bt0), order
    return order


def test_rows_equal_the_stacked_twin_and_only_changed_rows_are_written():
    pairs = [pair(s, 4 if s % 2 else 8) for s in range(SLOTS)]
    pairs[5] = None                                        # slot 5's adapter leaves this slice untouched
    stack, rows = SliceStack(), RowMap()
    writes = counted(stack)
    check(stack, rows, pairs, [0, 1, 2, 3])
    assert sorted(writes) == [0, 1, 2, 3]
    writes.clear()
    for _ in range(3):                                     # the same batch decoding: nothing copied
        check(stack, rows, pairs, [3, 1, 0, 2])
    assert writes == []
    before = rows.rows[:]
    order = check(stack, rows, pairs, [0, 1, 2, 3, 4])     # one request joins: one row
    assert order[:4] == before and len(writes) == 1
    writes.clear()
    order = check(stack, rows, pairs, [0, 2, 3, 4])        # one leaves: the last row moves into its hole
    assert len(writes) == 1 and order[1] == 4
    writes.clear()
    check(stack, rows, pairs, [0, 2, 3, 4, 5])             # a slot without weights here: row 4 (slot 4's old
    assert writes == [4]                                   # copy) zeroed
    pairs[2] = pair(100, 8)                                # slot 2 gets another adapter (new tensors)
    writes.clear()
    check(stack, rows, pairs, [0, 2, 3, 4, 5])
    assert len(writes) == 1
    pairs[3] = pair(200, 16)                               # a larger rank: the stack grows, every row rewritten
    check(stack, rows, pairs, [0, 2, 3, 4, 5])
    assert stack.A.shape[1] == 16
    check(stack, rows, pairs, [1])                         # fewer rows than the stack holds: views of its top
    check(stack, rows, pairs, [5])                         # only a slot without weights: (None, None)
    for steps in ([0, 1, 2, 3, 4, 5], [4, 0], [2, 3, 1], [0, 1, 2, 3, 4]):
        check(stack, rows, pairs, steps)


def test_a_replaced_adapter_is_not_kept_alive():
    pairs = [pair(s, 4) for s in range(2)]
    stack, rows = SliceStack(), RowMap()
    check(stack, rows, pairs, [0, 1])
    ref = __import__("weakref").ref(pairs[1][0])
    pairs[1] = pair(9, 4)                                  # evicted from the cache, slot reused
    gc.collect()
    assert ref() is None                                   # the stack held a weak reference only
    check(stack, rows, pairs, [0, 1])


def test_row_map_keeps_rows_and_fills_the_first_g():
    rm = RowMap()
    assert rm.assign([7, 3, 5]) == [3, 5, 7]
    assert rm.assign([5, 7, 3, 9]) == [3, 5, 7, 9]         # kept rows, the newcomer last
    assert rm.assign([3, 9]) == [3, 9]                     # 9 moves down into 5's row
    assert rm.assign([9, 1, 3]) == [3, 9, 1]
    assert rm.assign([]) == []
