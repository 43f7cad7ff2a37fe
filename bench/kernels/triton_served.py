"""The served HyLoRADA layer's adapter part as two Triton kernels, segmented by adapter (S-LoRA/Punica SGMV style).

Served form (DESIGN §3), per token t with adapter a = idx[t] (-1 = base: no delta, c = 1) and position scale p[t]:
    y[t] = c[a] * (base[t] + p[t] * B[a] @ (A[a] @ x[t]))          base = x @ W^T, computed by the caller (cuBLAS)
Semantics as a loop (the slow twin is `bench.kernels.served_layer.reference`):
    for t: a = idx[t]; y[t] = base[t] if a < 0 else c[a] * (base[t] + p[t] * (B[a] @ (A[a] @ x[t])))

Two launches per layer, over a per-step segment table (tokens sorted by adapter, base tokens last; built once per
step by `segment_table`, no host sync, reused by every layer):
  shrink   h[s] = (x[perm[s]] @ A[a]^T) * p[perm[s]]        one program per (adapter, BLOCK_M tokens); h in fp32
  expand   y[t] = c[a] * (base[t] + h[s] @ B[a]^T)          one program per (adapter, BLOCK_M tokens, BLOCK_N outputs);
           the base segment's programs copy base[t] to y[t]   the add and the x c are the epilogue, in fp32
Inputs bf16 / fp16 / fp32 with fp32 accumulation; fp32 dots run as IEEE (not TF32) so fp32 is a checkable path.

Status: checked only under Triton's CPU interpreter (TRITON_INTERPRET=1, tests/bench/kernels/test_triton_served.py)
against the per-token loop. It has never been compiled for or run on a GPU, and nothing here has been timed: block
sizes are untuned guesses and no speed is claimed. On a CUDA machine `python -m bench.kernels.served_layer` runs it
as "fused".
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class SegmentTable:
    """Tokens grouped by adapter. perm: [T] int32 token ids, adapter 0's first, base (-1) tokens last;
    counts, starts: [N+1] int32 tokens per segment and where it begins in perm (segment N = base tokens)."""
    perm: torch.Tensor
    counts: torch.Tensor
    starts: torch.Tensor


def segment_table(idx: torch.Tensor, n_adapters: int) -> SegmentTable:
    """Segments of idx: [T] ints in [-1, n_adapters). Stays on idx's device; an idx >= n_adapters raises."""
    key = torch.where(idx < 0, torch.full_like(idx, n_adapters), idx).long()
    perm = torch.argsort(key, stable=True).to(torch.int32)
    counts = torch.zeros(n_adapters + 1, dtype=torch.int32, device=idx.device)
    counts.scatter_add_(0, key, torch.ones_like(key, dtype=torch.int32))
    return SegmentTable(perm, counts, (torch.cumsum(counts, 0, dtype=torch.int32) - counts))


@triton.jit
def _segment_rows(perm_ptr, start_ptr, a, pid_m, count, BLOCK_M: tl.constexpr):
    """Rows [pid_m*BLOCK_M, +BLOCK_M) of adapter a's segment: (start, rows, row mask, token ids)."""
    start = tl.load(start_ptr + a)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < count
    tok = tl.load(perm_ptr + start + rows, mask=rmask, other=0).to(tl.int64)
    return start, rows, rmask, tok


@triton.jit
def _shrink_kernel(x_ptr, a_ptr, p_ptr, h_ptr, perm_ptr, count_ptr, start_ptr, d_in, rank,
                   sxt, sxk, san, sar, sak, sht,
                   FP32_IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr):
    # h[start + row, :rank] = (x[tok] @ A[a]^T) * p[tok] for this adapter's tokens tok = perm[start + row]
    pid_m = tl.program_id(0)
    a = tl.program_id(1)
    count = tl.load(count_ptr + a)
    if pid_m * BLOCK_M >= count:
        return
    start, rows, rmask, tok = _segment_rows(perm_ptr, start_ptr, a, pid_m, count, BLOCK_M)
    r = tl.arange(0, BLOCK_R)
    rkeep = r < rank
    a_base = a_ptr + a.to(tl.int64) * san
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, d_in, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < d_in
        xt = tl.load(x_ptr + tok[:, None] * sxt + k[None, :] * sxk, mask=rmask[:, None] & kmask[None, :], other=0.0)
        at = tl.load(a_base + k[:, None] * sak + r[None, :] * sar, mask=kmask[:, None] & rkeep[None, :], other=0.0)
        if FP32_IEEE:
            acc = tl.dot(xt, at, acc, input_precision="ieee")
        else:
            acc = tl.dot(xt, at, acc)
    pt = tl.load(p_ptr + tok, mask=rmask, other=0.0).to(tl.float32)
    acc = acc * pt[:, None]
    hrow = (start + rows).to(tl.int64)
    tl.store(h_ptr + hrow[:, None] * sht + r[None, :], acc, mask=rmask[:, None] & rkeep[None, :])


@triton.jit
def _expand_kernel(h_ptr, b_ptr, c_ptr, base_ptr, out_ptr, perm_ptr, count_ptr, start_ptr, d_out, rank, n_adapters,
                   sht, sbn, sbo, sbr, scn, sco, sbase_t, sbase_o, sout_t, sout_o,
                   FP32_IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    # y[tok, o] = c[a, o] * (base[tok, o] + h[start + row] @ B[a, o]^T); segment n_adapters (base tokens): y = base
    pid = tl.program_id(0)
    a = tl.program_id(1)
    n_tiles = tl.cdiv(d_out, BLOCK_N)
    pid_m = pid // n_tiles
    pid_n = pid % n_tiles
    count = tl.load(count_ptr + a)
    if pid_m * BLOCK_M >= count:
        return
    start, rows, rmask, tok = _segment_rows(perm_ptr, start_ptr, a, pid_m, count, BLOCK_M)
    o = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    omask = o < d_out
    mask = rmask[:, None] & omask[None, :]
    y = tl.load(base_ptr + tok[:, None] * sbase_t + o[None, :] * sbase_o, mask=mask, other=0.0).to(tl.float32)
    if a < n_adapters:
        r = tl.arange(0, BLOCK_R)
        rkeep = r < rank
        hrow = (start + rows).to(tl.int64)
        h = tl.load(h_ptr + hrow[:, None] * sht + r[None, :], mask=rmask[:, None] & rkeep[None, :], other=0.0)
        a64 = a.to(tl.int64)
        bt = tl.load(b_ptr + a64 * sbn + r[:, None] * sbr + o[None, :] * sbo, mask=rkeep[:, None] & omask[None, :],
                     other=0.0)
        if FP32_IEEE:
            delta = tl.dot(h.to(bt.dtype), bt, input_precision="ieee")
        else:
            delta = tl.dot(h.to(bt.dtype), bt)
        cc = tl.load(c_ptr + a64 * scn + o * sco, mask=omask, other=1.0).to(tl.float32)
        y = cc[None, :] * (y + delta)
    tl.store(out_ptr + tok[:, None] * sout_t + o[None, :] * sout_o, y.to(out_ptr.dtype.element_ty), mask=mask)


def _pow2(n: int, lo: int) -> int:
    return max(lo, triton.next_power_of_2(n))


def served_lora_triton(base, x, A, B, c, p, idx, table: SegmentTable | None = None, out=None):
    """y = c[idx] * (base + p * B[idx] A[idx] x) per token; idx -1 rows are base unchanged. Returns y: [T, d_out].

    base: [T, d_out]  x: [T, d_in] (same dtype: bf16, fp16 or fp32)   A: [N, r, d_in]  B: [N, d_out, r] (x's dtype)
    c: [N, d_out]  p: [T]  idx: [T] ints in [-1, N)   table: segment_table(idx, N), built once per step
    out: [T, d_out] to write into (may be base itself); default a new tensor like base.
    """
    T, d_in = x.shape
    N, rank, _ = A.shape
    d_out = B.shape[1]
    bad = [f"{name} {tuple(t.shape)} != {want}" for name, t, want in (
        ("base", base, (T, d_out)), ("A", A, (N, rank, d_in)), ("B", B, (N, d_out, rank)), ("c", c, (N, d_out)),
        ("p", p, (T,)), ("idx", idx, (T,))) if tuple(t.shape) != want]
    bad += [f"{name} dtype {t.dtype} != x dtype {x.dtype}" for name, t in (("base", base), ("A", A), ("B", B))
            if t.dtype != x.dtype]
    if bad:
        raise ValueError("served_lora_triton: " + "; ".join(bad))
    out = torch.empty_like(base) if out is None else out
    if T == 0:
        return out
    table = segment_table(idx, N) if table is None else table
    p = p.contiguous()
    h = torch.empty(T, rank, device=x.device, dtype=torch.float32)
    ieee = x.dtype == torch.float32
    block_m = 16 if T <= 16 else (32 if T <= 64 else 64)
    block_r = _pow2(rank, 16)
    block_k = min(_pow2(d_in, 16), 64)
    block_n = min(_pow2(d_out, 16), 128)
    tiles_m = triton.cdiv(T, block_m)                    # upper bound per segment; programs past a segment's end return
    _shrink_kernel[(tiles_m, N)](
        x, A, p, h, table.perm, table.counts, table.starts, d_in, rank,
        x.stride(0), x.stride(1), A.stride(0), A.stride(1), A.stride(2), h.stride(0),
        FP32_IEEE=ieee, BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_R=block_r)
    _expand_kernel[(tiles_m * triton.cdiv(d_out, block_n), N + 1)](
        h, B, c, base, out, table.perm, table.counts, table.starts, d_out, rank, N,
        h.stride(0), B.stride(0), B.stride(1), B.stride(2), c.stride(0), c.stride(1),
        base.stride(0), base.stride(1), out.stride(0), out.stride(1),
        FP32_IEEE=ieee, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_R=block_r)
    return out
