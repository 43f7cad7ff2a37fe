"""Tensor-parallel sharding of the HyLoRADA served form, as pure functions (DESIGN.md §5).

The layers (layers.py) do the same through vLLM's own `slice_lora_b` on c viewed as [d_out, 1]; these
functions state the rules and let a test run them on simulated shards without a process group.

Column-parallel (q/k/v, gate/up; output rows split over ranks):
    rank k holds rows R_k of W, B and c:  y[:, R_k] = c[R_k] ⊙ (x W[R_k]^T + p · (x A^T) B[R_k]^T) + b[R_k]
    -> c is sliced exactly like B's output rows; gathering the shards gives the full y.
Row-parallel (o_proj, down_proj; input columns split):
    rank k holds columns C_k of W and A; partial_k = x[:, C_k] W[:, C_k]^T + p · (x[:, C_k] A[:, C_k]^T) B^T
    y = c ⊙ Σ_k partial_k + b   -> c and b applied once, after the all-reduce (B and c unsliced).
"""
from __future__ import annotations

import torch
from torch import Tensor


def shard_rows(t: Tensor, rank: int, world: int, sizes: list[int] | None = None) -> Tensor:
    """Rows of t for `rank`: each block of `sizes` (merged layers: [q, k, v] or [gate, up]) split evenly."""
    sizes = sizes or [t.shape[0]]
    out, off = [], 0
    for n in sizes:
        k = n // world
        out.append(t[off + rank * k: off + (rank + 1) * k])
        off += n
    return torch.cat(out)


def shard_cols(t: Tensor, rank: int, world: int) -> Tensor:
    k = t.shape[1] // world
    return t[:, rank * k:(rank + 1) * k]


def unshard_rows(shards: list[Tensor], sizes: list[int]) -> Tensor:
    """Inverse of shard_rows over all ranks along the last dim (the all-gather of a column-parallel output)."""
    world = len(shards)
    starts = [sum(m // world for m in sizes[:j]) for j in range(len(sizes))]
    cols = []
    for j, n in enumerate(sizes):
        k = n // world
        cols.extend(s[..., starts[j]:starts[j] + k] for s in shards)
    return torch.cat(cols, -1)
