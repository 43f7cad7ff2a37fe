"""The static served path: every per-step input in a persistent tensor of fixed capacity, written in place, and
no Python decision on step data — what vLLM's torch.compile (all guards dropped) and CUDA graphs can hold
(DESIGN.md §4.1, docs/gpu.md). No vLLM imports.

`StaticTables` (one per engine, allocated once; S = slots, C = token capacity, NB = bucket capacity, M = w_pos rows):

    bias       [S+1, NB]  float32  each slot's position bias (row S and slots without one: zeros -> p = 1)
    half, top  [S+1]      int64    the slot's bucket setting: num_buckets // 2, num_buckets - 1
    log_range  [S+1]      float64  ln(max_position / half), as functional.position_bucket computes it
    w_pos      [M, S+1]   float32  w_pos per (layer, module slice) row and slot (column S: 0); rows reserved at
                                   start-up only (add_rows, while the LoRA manager registers its layers)
    slots      [C]        int64    slot of each token; base and padding tokens -> S (the identity row)
    positions  [C]        int64    each token's position (padding: 0)

Who writes: `write_slot` / `clear_slot` when an adapter enters a slot (vLLM's activate_adapter, outside any graph;
per-layer c and w_pos are written in place by layers.hy_set); `set_mapping` once per step before the forward (on
the GPU: where PunicaWrapperGPU.update_metadata writes vLLM's own token indices). Nothing here is reallocated after
start-up, and none of these writes reads a value back to the host.

Inside a graph, per step `step_inputs(tables) -> Step` (bucket of every token, base mask) and per layer
`lora_delta` / `scale_c` / `served_forward` — static-shape tensor ops only (gathers by slot, einsum), so the
same trace serves every batch. Semantics of one layer, for every token t (slot s = slots[t]) and slice i:

    y[t] = c[s] * (x[t] @ W.T + [s < S] * p_i(t) * (x[t] @ A_i[s].T) @ B_i[s].T) + b
    p_i(t) = 1 + sigmoid(w_pos[rows[i], s]) * tanh(bias[s, bucket_s(positions[t])])     (functional.position_scale)

Stage 1 gathers each token's A/B by slot (vLLM's punica semantics: `A[slots[t]]`); fused kernels are later work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from hylorada.functional import log_bucket, position_scale

MAX_BUCKETS = 256          # the bias table's width: an adapter with more position buckets is refused


def _setting(num_buckets: int, max_position: int) -> tuple[int, int, float]:
    half = num_buckets // 2
    return half, num_buckets - 1, math.log(max_position / half)


@dataclass
class StaticTables:
    num_slots: int
    bias: Tensor
    half: Tensor
    top: Tensor
    log_range: Tensor
    w_pos: Tensor
    slots: Tensor
    positions: Tensor

    @classmethod
    def allocate(cls, num_slots: int, max_tokens: int, num_buckets: int = MAX_BUCKETS, device="cpu") -> "StaticTables":
        S, dev = num_slots, torch.device(device)
        half, top, log_range = _setting(64, 32768)                    # any setting: an empty slot's bias is 0
        return cls(num_slots=S, bias=torch.zeros(S + 1, num_buckets, device=dev),
                   half=torch.full((S + 1,), half, dtype=torch.long, device=dev),
                   top=torch.full((S + 1,), top, dtype=torch.long, device=dev),
                   log_range=torch.full((S + 1,), log_range, dtype=torch.float64, device=dev),
                   w_pos=torch.zeros(0, S + 1, device=dev),
                   slots=torch.full((max_tokens,), S, dtype=torch.long, device=dev),
                   positions=torch.zeros(max_tokens, dtype=torch.long, device=dev))

    @property
    def capacity(self) -> int:
        return self.slots.shape[0]

    # --- start-up ----------------------------------------------------------------------
    def add_rows(self, n: int) -> tuple[int, ...]:
        """Reserve n w_pos rows (one per module slice of a layer) — start-up only, before any graph is traced."""
        m = self.w_pos.shape[0]
        self.w_pos = torch.cat([self.w_pos, self.w_pos.new_zeros(n, self.num_slots + 1)])
        return tuple(range(m, m + n))

    # --- an adapter enters a slot (outside any graph) --------------------------------------
    def clear_slot(self, index: int) -> None:
        """Slot `index` back to the identity position scale (p = 1)."""
        self.bias[index] = 0

    def write_slot(self, index: int, bias: Tensor, num_buckets: int, max_position: int) -> None:
        """Slot `index` gets position bias `bias` [num_buckets] with its bucket setting (in place)."""
        nb_cap = self.bias.shape[1]
        if num_buckets > nb_cap or bias.shape != (num_buckets,):
            raise ValueError(f"position bias of shape {tuple(bias.shape)} for {num_buckets} buckets does not fit the "
                             f"engine's table of {nb_cap} buckets per slot")
        self.bias[index] = 0
        self.bias[index, :num_buckets] = bias.to(self.bias)
        half, top, log_range = _setting(num_buckets, max_position)
        self.half[index], self.top[index], self.log_range[index] = half, top, log_range

    # --- once per step, before the forward (outside any graph) ---------------------------
    def set_mapping(self, token_slots: Tensor, positions: Tensor) -> None:
        """token_slots [n] vLLM's slot per token (-1 = base), positions [n]: written in place, tokens n.. as
        padding (identity slot, position 0). Shapes only are read on the host, never values."""
        n = token_slots.shape[0]
        if n > self.capacity or positions.shape[0] != n:
            raise ValueError(f"{n} token slots and {positions.shape[0]} positions for tables of {self.capacity} tokens")
        S = self.num_slots
        self.slots[:n].copy_(torch.where(token_slots >= 0, token_slots, S))
        self.slots[n:].fill_(S)
        self.positions[:n].copy_(positions)
        self.positions[n:].fill_(0)


class Step(NamedTuple):
    """One step's per-token values, computed inside the graph from the tables: flat [C] = slot * NB + bucket
    (the index of each token's bias entry), keep [C, 1] True for adapter tokens."""
    flat: Tensor
    keep: Tensor


def step_inputs(t: StaticTables) -> Step:
    """Every token's bucket under its slot's setting (functional.log_bucket, float64) and the base mask."""
    s = t.slots
    bucket = log_bucket(t.positions, t.half[s], t.top[s], t.log_range[s])
    return Step(s * t.bias.shape[1] + bucket, (s < t.num_slots).unsqueeze(1))


def lora_delta(x: Tensor, a_stacked, b_stacked, rows, t: StaticTables, step: Step) -> Tensor:
    """delta [T, sum(n_i)] for x [T, d_in] (T <= capacity: the step's tokens are the first T);
    a_stacked[i] [S, 1, R, d_in], b_stacked[i] [S, 1, n_i, R] (vLLM's stacks, rank zero-padded), rows[i] slice i's
    w_pos row. Base and padding tokens read slot S-1's weights and are set to exactly 0 (a select, not * 0)."""
    T = x.shape[0]
    slot, flat, keep = t.slots[:T], step.flat[:T], step.keep[:T]
    safe = slot.clamp_max(t.num_slots - 1)
    out = []
    for a, b, row in zip(a_stacked, b_stacked, rows):                # the layer's slices: fixed at build
        p = position_scale(t.bias.flatten(), t.w_pos[row, slot], flat)                     # [T]
        h = torch.einsum("td,trd->tr", x, a[safe, 0].to(x.dtype))                            # [T, R]
        h = torch.where(keep, h * p.unsqueeze(1).to(h.dtype), 0)
        out.append(torch.einsum("tr,tnr->tn", h, b[safe, 0].to(h.dtype)))
    return torch.cat(out, 1)


def scale_c(y: Tensor, c: Tensor, t: StaticTables) -> Tensor:
    """y [T, width] * c[slot] (c [S+1, width], row S ones: base and padding tokens unchanged)."""
    return y * c[t.slots[:y.shape[0]]].to(y.dtype)


def served_forward(x: Tensor, W: Tensor, b: Tensor | None, layer, t: StaticTables, step: Step) -> Tensor:
    """One served layer: c[s] * (x W^T + delta) + b. `layer` holds vLLM's names: lora_a_stacked, lora_b_stacked,
    hy_c [S+1, d_out], hy_rows (its w_pos rows)."""
    y = F.linear(x, W) + lora_delta(x, layer.lora_a_stacked, layer.lora_b_stacked, layer.hy_rows, t, step)
    y = scale_c(y, layer.hy_c, t)
    return y if b is None else y + b
