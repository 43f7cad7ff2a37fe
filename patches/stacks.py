"""The batch stacks of one layer slice: the weights of the step's small-group adapters, one row each, kept across steps.

grouped_cpu.small_delta_ multiplies every decode token by its own adapter's weights in one bmm pair per slice,
which needs those adapters' A and B side by side: [G, R, d_in] and [G, n, R]. The weights themselves stay where
they are (the views of the engine's cached LoRA tensors, layers.py), so stacking them copies them. Stacking
them anew each step (grouped_cpu.stack_slots, the reference twin) copied every adapter's weights of every layer
on every decode step: aten::cat took 28 % of a step with 16 distinct adapters (bench.method.profile_step).

A SliceStack keeps its rows from step to step. Row r holds the adapter of the slot that HyState's RowMap put in
row r. A row is rewritten only when the tensors it was written from are no longer that slot's A and B (held as
weak references, so an evicted adapter's tensors are not kept alive). That happens when the slot got another
adapter or when the slot moved to another row. Under continuous batching a step rewrites the rows of the
requests that joined, not all G.

Semantics (equal to stack_slots for the same slots, bit for bit):

    A[g, :r_g] = A_{slots[g]},  A[g, r_g:] = 0          B[g, :, :r_g] = B_{slots[g]},  B[g, :, r_g:] = 0
    (a slot with no weights for this slice: a zero row)     returns A[:G, :R], B[:G, :, :R]^T   (views)

with R the largest rank among the step's slots (the stacks may be wider from earlier steps: zeros there).

Memory: capacity x R x (d_in + n) per slice, where capacity is the most distinct small-group adapters one step has
had (at most --max-loras and the running requests). The rows of adapters no longer running stay (as copies) until
they are reused. `nbytes` counts them; the residency RPC reports them with the slots.
"""
from __future__ import annotations

import weakref

import torch
from torch import Tensor


class SliceStack:
    def __init__(self):
        self.A: Tensor | None = None                   # [capacity, R, d_in]
        self.B: Tensor | None = None                   # [capacity, n, R]
        self.held: list = []                           # held[r]: weak refs to the (A, B) row r was written from

    @property
    def nbytes(self) -> int:
        return 0 if self.A is None else self.A.nbytes + self.B.nbytes

    def rows(self, pairs, slots: list[int], d_in: int, n: int) -> tuple[Tensor | None, Tensor | None]:
        """A [G, R, d_in] and B^T [G, R, n] for `slots` (row g = slots[g]); (None, None) when none of them has
        weights for this slice. pairs[s]: slot s's (A [r, d_in], B [n, r]) or None."""
        got = [pairs[s] for s in slots]
        live = [p for p in got if p is not None]
        if not live:
            return None, None
        G, R = len(got), max(a.shape[0] for a, _ in live)
        a0 = live[0][0]
        if self.A is not None and (self.A.dtype != a0.dtype or self.A.device != a0.device
                                   or self.A.shape[2] != d_in or self.B.shape[1] != n):
            self.A, self.B, self.held = None, None, []                     # another layout: start again
        if self.A is None or G > self.A.shape[0] or R > self.A.shape[1]:
            self._grow(max(G, 0 if self.A is None else self.A.shape[0]),
                       max(R, 0 if self.A is None else self.A.shape[1]), d_in, n, a0)
        for g, p in enumerate(got):
            if not _same(self.held[g], p):
                self._write(g, p)
        return self.A[:G, :R], self.B[:G, :, :R].transpose(1, 2)         # the step's own largest rank

    def _grow(self, cap: int, R: int, d_in: int, n: int, like: Tensor) -> None:
        """Larger stacks, the rows written so far kept (zero-padded to the new rank, as they already were)."""
        A = torch.zeros(cap, R, d_in, dtype=like.dtype, device=like.device)
        B = torch.zeros(cap, n, R, dtype=like.dtype, device=like.device)
        if self.A is not None:
            c, r = self.A.shape[:2]
            A[:c, :r] = self.A
            B[:c, :, :r] = self.B
        self.A, self.B = A, B
        self.held = self.held + [None] * (cap - len(self.held))

    def _write(self, g: int, pair) -> None:
        if pair is None:
            self.A[g].zero_()
            self.B[g].zero_()
        else:
            a, b = pair
            r = a.shape[0]
            self.A[g, :r].copy_(a)
            self.A[g, r:].zero_()
            self.B[g, :, :r].copy_(b)
            self.B[g, :, r:].zero_()
        self.held[g] = None if pair is None else (weakref.ref(pair[0]), weakref.ref(pair[1]))


def _same(held, pair) -> bool:
    if held is None or pair is None:
        return held is None and pair is None
    return held[0]() is pair[0] and held[1]() is pair[1]
