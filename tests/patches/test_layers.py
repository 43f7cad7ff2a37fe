"""layers.py's tensor-parallel rules (DESIGN.md §5) on 2 simulated shards (pure torch, no process group).

Column-parallel (merged q/k/v with GQA, merged gate/up): every rank computes c_k ⊙ (W_k x + p B_k A x) + b_k
with W, B, c, b sliced by the same output rows; the all-gather equals the unsharded served_linear.
Row-parallel: partials over input columns, summed (the all-reduce), then c and b once — equals the full
layer. The HyLoRADA layers slice c with vLLM's own slice_lora_b: checked against shard_rows here.
The sharding helpers below are the rules written as plain slicing (they were patches/tp.py, used by no product code).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor

from hylorada.functional import served_linear
from hylorada_patches.layers import HyLoRADALinearMixin

WORLD, D_IN, R = 2, 64, 4
g = torch.Generator().manual_seed(0)


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


def rand(*shape):
    return torch.randn(*shape, generator=g)


def test_column_parallel_merged_qkv_and_gate_up():
    for sizes in ([64, 32, 32], [96, 96]):
        d_out = sum(sizes)
        W, b, c, x, p = rand(d_out, D_IN), rand(d_out), 1 + 0.1 * rand(d_out), rand(5, D_IN), 1 + 0.2 * rand(5)
        A, Bf = rand(R, D_IN), rand(d_out, R)
        full = served_linear(x, W, b, A, Bf, c, p)
        shards = [served_linear(x, shard_rows(W, k, WORLD, sizes), shard_rows(b, k, WORLD, sizes), A,
                                shard_rows(Bf, k, WORLD, sizes), shard_rows(c, k, WORLD, sizes), p) for k in range(WORLD)]
        torch.testing.assert_close(unshard_rows(shards, sizes), full, rtol=1e-5, atol=1e-5)


def test_row_parallel_c_after_all_reduce():
    d_out = 48
    W, b, c, x, p = rand(d_out, D_IN), rand(d_out), 1 + 0.1 * rand(d_out), rand(5, D_IN), 1 + 0.2 * rand(5)
    A, Bf = rand(R, D_IN), rand(d_out, R)
    full = served_linear(x, W, b, A, Bf, c, p)
    partials = [served_linear(shard_cols(x, k, WORLD), shard_cols(W, k, WORLD), None, shard_cols(A, k, WORLD), Bf,
                              None, p) for k in range(WORLD)]
    torch.testing.assert_close(c * sum(partials) + b, full, rtol=1e-5, atol=1e-5)
    # applying the bias per shard before the reduce (vLLM adds it on rank 0 only for this reason) would be wrong
    wrong = c * sum(pt + b for pt in partials)
    assert (wrong - full).abs().max() > 1e-2


def _merged(cls_name, sizes, rank):
    """A stand-in for vLLM's merged layer on `rank` of WORLD: only what slice_lora_b reads."""
    import vllm.lora.layers as L
    cls = getattr(L, cls_name)
    slices = tuple(n // WORLD for n in sizes)
    fake = SimpleNamespace(n_slices=len(sizes), output_slices=slices, output_ids=(rank,) * len(sizes), tp_size=WORLD)
    fake.slice_lora_b = lambda lb: cls.slice_lora_b(fake, lb)
    return fake


def test_layer_slices_c_like_b_with_vllms_own_slicing():
    for cls_name, sizes in (("MergedQKVParallelLinearWithLoRA", [64, 32, 32]),
                            ("MergedColumnParallelLinearWithLoRA", [96, 96])):
        cs = [1 + rand(n) for n in sizes]
        for k in range(WORLD):
            fake = _merged(cls_name, sizes, k)
            got = HyLoRADALinearMixin.hy_local_c(fake, cs)
            torch.testing.assert_close(got, shard_rows(torch.cat(cs), k, WORLD, sizes))
            # a module of the merged layer without c is ones on its rows
            got = HyLoRADALinearMixin.hy_local_c(fake, [cs[0]] + [None] * (len(sizes) - 1))
            want = shard_rows(torch.cat([cs[0]] + [torch.ones(n) for n in sizes[1:]]), k, WORLD, sizes)
            torch.testing.assert_close(got, want)


class _Slices(HyLoRADALinearMixin):
    """Just what hy_per_slice reads of a vLLM LoRA layer."""

    def __init__(self, n_slices, output_sizes=None, dtype=torch.float32):
        self.n_slices, self.tp_size = n_slices, 1
        self.base_layer = SimpleNamespace(output_sizes=output_sizes)
        self.lora_a_stacked = (torch.zeros(1, 1, R, D_IN, dtype=dtype),)


def test_views_are_the_cached_tensors_per_slice():
    """set_lora's inputs as vLLM lays them out per slice (layers.hy_per_slice): merged lists keep their tensors
    (no copy: the grouped path reads the engine's cache), a one-tensor VariableSlice checkpoint shares A and
    splits B by the output sizes, None stays None, and only a dtype mismatch makes a copy."""
    a, bq, bv = rand(R, D_IN), rand(32, R), rand(16, R)
    A, B = _Slices(3).hy_per_slice([a, None, a], [bq, None, bv])
    assert A[0] is a and A[1] is None and B[1] is None and B[2] is bv
    single = rand(48, R)
    A, B = _Slices(1).hy_per_slice(a, single)
    assert A == [a] and B[0] is single
    A, B = _Slices(2, output_sizes=[32, 16]).hy_per_slice(a, single)
    assert A[0] is a and A[1] is a and torch.equal(torch.cat(B), single) and B[1].data_ptr() == single[32:].data_ptr()
    A, _ = _Slices(1, dtype=torch.bfloat16).hy_per_slice(a, single)
    assert A[0].dtype == torch.bfloat16
