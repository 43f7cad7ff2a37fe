"""A toy stack of served layers on patches' static path, with everything a compile / CUDA-graph check needs:
random in-place step rewrites, a per-token loop twin, a step-dependent negative control and the comparison.

Used by tests/patches/test_static_path.py (torch.compile under vLLM's guard policy, CPU) and bench/kernels/gpu_check.py
(CUDA graphs on a GPU). Shapes are tiny and fixed: capacity C tokens, S slots, rank R, width D; layer 0 has two
output slices (a merged qkv-like layer), the others one; layer 1 has no bias.

    stack = Stack.build(device, capacity=C)   tables + layers (vLLM's attribute names), every adapter random
    x = stack.rewrite(g, base_only=False)     one step: new mapping (token count n <= C, slots incl. base, positions)
                                              and in-place rewrites of some slot's A, B, c, w_pos, position bias
                                              and bucket setting; returns x [C, D] (rows n.. padding)
    stack.forward(x)                          the static served stack: step_inputs + served_forward per layer
    stack.loop(x)                             the slow twin: per token, functional.served_linear with its own adapter
    GroupedLike(stack).forward(x)             the negative control: Python loops over the step's groups, planned
                                              eagerly from the mapping like HyState.begin_step (host syncs)
    max_diffs(compiled, eager, steps)         [max |compiled(x) - eager(x)|] over the steps, in order
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from hylorada.functional import position_bucket, position_scale, served_linear
from hylorada_patches.static_path import StaticTables, served_forward, step_inputs

C, S, R, D, NB = 16, 3, 4, 16, 64
SLICES = ((8, 8), (D,), (D,))                  # output slices per layer
SETTINGS = ((16, 128), (32, 4096), (64, 256))  # (num_buckets, max_position) an adapter may have


@dataclass
class Layer:
    W: Tensor
    b: Tensor | None
    lora_a_stacked: tuple
    lora_b_stacked: tuple
    hy_c: Tensor
    hy_rows: tuple
    output_slices: tuple


@dataclass
class Stack:
    tables: StaticTables
    layers: list
    settings: list = field(default_factory=lambda: [None] * S)    # per slot (num_buckets, max_position) or None
    n: int = 0

    @classmethod
    def build(cls, device="cpu", seed: int = 0, capacity: int = C) -> "Stack":
        g = torch.Generator().manual_seed(seed)
        tables = StaticTables.allocate(S, capacity, NB, device)
        layers = []
        for i, slices in enumerate(SLICES):
            rnd = lambda *shape: torch.randn(*shape, generator=g).to(device)        # noqa: E731
            layers.append(Layer(W=rnd(sum(slices), D) / D ** 0.5, b=None if i == 1 else rnd(sum(slices)),
                                lora_a_stacked=tuple(rnd(S, 1, R, D) * 0.3 for _ in slices),
                                lora_b_stacked=tuple(rnd(S, 1, n, R) * 0.3 for n in slices),
                                hy_c=torch.ones(S + 1, sum(slices), device=device),
                                hy_rows=tables.add_rows(len(slices)), output_slices=slices))
        stack = cls(tables, layers)
        for s in range(S):
            stack.rewrite_slot(g, s)
        return stack

    @property
    def device(self):
        return self.tables.slots.device

    def rewrite_slot(self, g: torch.Generator, s: int) -> None:
        """New adapter weights, c, w_pos and position bias for slot s — every write in place."""
        rnd = lambda *shape: torch.randn(*shape, generator=g).to(self.device)       # noqa: E731
        for L in self.layers:
            for a, b in zip(L.lora_a_stacked, L.lora_b_stacked):
                a[s].copy_(rnd(*a[s].shape) * 0.3)
                b[s].copy_(rnd(*b[s].shape) * 0.3)
            L.hy_c[s].copy_(1 + 0.2 * rnd(L.hy_c.shape[1]))
            self.tables.w_pos[list(L.hy_rows), s] = rnd(len(L.hy_rows))
        k = int(torch.randint(len(SETTINGS) + 1, (), generator=g))
        if k == len(SETTINGS):                         # a plain LoRA: no position bias (p = 1)
            self.tables.clear_slot(s)
            self.settings[s] = None
        else:
            nb, max_pos = SETTINGS[k]
            self.tables.write_slot(s, rnd(nb), nb, max_pos)
            self.settings[s] = (nb, max_pos)

    def rewrite(self, g: torch.Generator, base_only: bool = False, max_n: int | None = None) -> Tensor:
        """One step's inputs: a new token count n <= max_n (default: the capacity), mapping and positions, and one
        slot's adapter rewritten; x [capacity, D], rows n.. zero."""
        if not base_only:
            self.rewrite_slot(g, int(torch.randint(S, (), generator=g)))
        cap = self.tables.capacity
        n = int(torch.randint(1, (max_n or cap) + 1, (), generator=g))
        slots = torch.full((n,), -1) if base_only else torch.randint(-1, S, (n,), generator=g)
        positions = torch.randint(0, 6000, (n,), generator=g)
        self.tables.set_mapping(slots.to(self.device), positions.to(self.device))
        self.n = n
        x = torch.zeros(cap, D)
        x[:n] = torch.randn(n, D, generator=g)
        return x.to(self.device)

    def forward(self, x: Tensor) -> Tensor:
        step = step_inputs(self.tables)
        for L in self.layers:
            x = served_forward(x, L.W, L.b, L, self.tables, step)
        return x

    def loop(self, x: Tensor) -> Tensor:
        """Per token, per layer: functional.served_linear with the token's own adapter (slices concatenated)."""
        t = self.tables
        out = []
        for i in range(x.shape[0]):
            s, pos, h = int(t.slots[i]), t.positions[i:i + 1], x[i:i + 1]
            for L in self.layers:
                if s == S:                              # base or padding: the base layer only
                    h = F.linear(h, L.W, L.b)
                    continue
                parts, off = [], 0
                for a, b, row, n in zip(L.lora_a_stacked, L.lora_b_stacked, L.hy_rows, L.output_slices):
                    if self.settings[s] is None:
                        p = torch.ones(1, device=h.device)
                    else:
                        nb, max_pos = self.settings[s]
                        p = position_scale(t.bias[s, :nb], t.w_pos[row, s], position_bucket(pos, nb, max_pos))
                    parts.append(served_linear(h, L.W[off:off + n], None, a[s, 0], b[s, 0], L.hy_c[s, off:off + n], p))
                    off += n
                h = torch.cat(parts, 1) if L.b is None else torch.cat(parts, 1) + L.b
            out.append(h)
        return torch.cat(out)


class GroupedLike:
    """Today's grouped path in miniature — the negative control: the step's groups are planned eagerly from the
    mapping (`.tolist()`, like HyState.begin_step) into a Python list the layers loop over. Traced once, the list
    of the first step is baked into the graph."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.groups: list[tuple[int, list[int]]] = []

    def plan(self) -> None:
        slots = self.stack.tables.slots.tolist()
        self.groups = [(s, [i for i, v in enumerate(slots) if v == s]) for s in sorted(set(slots)) if s < S]

    def forward(self, x: Tensor) -> Tensor:
        st = self.stack
        step = step_inputs(st.tables)
        for L in st.layers:
            y = F.linear(x, L.W)
            for s, tokens in self.groups:
                idx = torch.tensor(tokens, device=x.device)
                parts = []
                for a, b, row in zip(L.lora_a_stacked, L.lora_b_stacked, L.hy_rows):
                    p = position_scale(st.tables.bias.flatten(), st.tables.w_pos[row, s], step.flat[idx])
                    parts.append(((x[idx] @ a[s, 0].t()) * p.unsqueeze(1)) @ b[s, 0].t())
                y = y.index_copy(0, idx, (y[idx] + torch.cat(parts, 1)) * L.hy_c[s])
            x = y if L.b is None else y + L.b
        return x


def max_diffs(compiled, eager, steps) -> list[float]:
    """For each step (a callable preparing the step in place and returning x): max |compiled(x) - eager(x)|."""
    out = []
    for prepare in steps:
        x = prepare()
        with torch.no_grad():
            out.append(float((compiled(x) - eager(x)).abs().max()))
    return out
