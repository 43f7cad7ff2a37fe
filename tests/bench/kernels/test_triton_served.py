"""The Triton served-layer kernel equals the per-token loop, run on CPU tensors by Triton's interpreter.

Triton 3.9 picks interpreter or compiler when `triton.jit` decorates, reading TRITON_INTERPRET then
(knobs.runtime.interpret) — for triton's own library functions too, so the variable must be set before triton is
first imported. The kernels therefore run once in a subprocess (this file as a script, TRITON_INTERPRET=1) that
writes every case's output; the tests compare those with the loop here. bf16 is not checked under the interpreter:
its tl.dot on bf16 operands returns garbage (~1e10 on a bare 16x16 dot in 3.9); bf16 is checked on a GPU (last test).

Tolerance, fp32: both sides use the same fp32 inputs and differ only in summation order, so each dot of length K
errs by at most ~K*2^-24*sum|terms| (K <= 64 here: ~4e-6 of O(1) sums; observed <= 2e-6 with |y| up to ~10).
rtol = atol = 1e-5 sits above that; a real fault (p dropped: 10% of the O(1) delta; wrong adapter or c: O(1)) is
>= 1e3 times larger. fp16: the output and the rank-r intermediate are each rounded to fp16 (2^-11 relative), so
rtol = atol = 1e-2 (about 20 ulp of |y| <= ~10; observed <= 4e-3).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.kernels import served_layer as k

ROOT = Path(__file__).resolve().parents[3]
# name: (T, rank, idx layout, dtype, how the wrapper is called)
CASES = {f"T{T}-r{r}-{lay}": (T, r, lay, torch.float32, "plain")
         for T in (1, 5, 33) for r in (8, 16) for lay in ("unsorted", "sorted")}
CASES |= {"fp16": (33, 16, "unsorted", torch.float16, "plain"), "table-inplace-strided": (33, 8, "unsorted",
          torch.float32, "inplace"), "all-base": (5, 8, "sorted", torch.float32, "all_base")}


def inputs(T, rank, layout, dtype=torch.float32, how="plain", d_in=64, d_out=96, n=3):
    """3 adapters + base (-1) tokens; B at std 0.5 so the delta is as large as the base part."""
    inp = k.make_inputs(T, d_in, d_out, n, rank, torch.float32, "cpu")
    inp["B"] = inp["B"] * 25
    idx = (torch.arange(T) + 1) % (n + 1) - 1                      # T=1: [0]; T>=4: every adapter and base
    g = torch.Generator().manual_seed(T)
    inp["idx"] = idx[torch.randperm(T, generator=g)] if layout == "unsorted" else torch.sort(idx).values
    if how == "all_base":
        inp["idx"] = torch.full((T,), -1)
    for name in ("x", "W", "A", "B", "c", "p"):
        inp[name] = inp[name].to(dtype)
    return inp


def compute(ts, how, inp):
    """Runs the wrapper the way the case says; returns (y, extra facts to check)."""
    x, base = inp["x"], inp["x"] @ inp["W"].T
    if how != "inplace":
        return ts.served_lora_triton(base, x, inp["A"], inp["B"], inp["c"], inp["p"], inp["idx"]), {"base": base}
    wide = torch.zeros(x.shape[0], 2 * x.shape[1], dtype=x.dtype)
    wide[:, ::2] = x                                                 # a non-contiguous x
    table = ts.segment_table(inp["idx"], inp["A"].shape[0])
    y = ts.served_lora_triton(base, wide[:, ::2], inp["A"], inp["B"], inp["c"], inp["p"], inp["idx"], table=table,
                              out=base)
    return y, {"wrote_into_base": y is base}


def ref32(inp):
    return k.reference(**{n: (v.float() if v.is_floating_point() else v) for n, v in inp.items()})


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("triton_interp") / "out.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out)


@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_loop(interpreted, case):
    T, rank, layout, dtype, how = CASES[case]
    inp = inputs(T, rank, layout, dtype, how)
    y, facts = interpreted[case]
    assert y.dtype == dtype and y.shape == (T, inp["W"].shape[0])
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(y.float(), ref32(inp), rtol=tol, atol=tol)
    if how == "all_base":
        assert torch.equal(y, facts["base"])                           # base tokens: untouched, bit for bit
    if how == "inplace":
        assert facts["wrote_into_base"]


def test_segment_table():
    ts = pytest.importorskip("bench.kernels.triton_served")
    t = ts.segment_table(torch.tensor([2, -1, 0, 2, 0, -1, 2]), 3)
    assert t.perm.tolist() == [2, 4, 0, 3, 6, 1, 5]
    assert t.counts.tolist() == [2, 0, 3, 2] and t.starts.tolist() == [0, 2, 2, 5]


def test_bad_shapes_are_refused_in_one_error():
    ts = pytest.importorskip("bench.kernels.triton_served")
    inp = inputs(5, 8, "sorted")
    with pytest.raises(ValueError, match=r"c \(3, 95\).*p \(4,\)"):
        ts.served_lora_triton(inp["x"] @ inp["W"].T, inp["x"], inp["A"], inp["B"], inp["c"][:, :95], inp["p"][:4],
                              inp["idx"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled kernel needs a CUDA GPU")
def test_compiled_on_cuda_bf16_and_fp32():
    from bench.kernels.triton_served import served_lora_triton
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
        inp = {n: (v.cuda() if torch.is_tensor(v) else v) for n, v in inputs(33, 16, "unsorted", dtype).items()}
        y = served_lora_triton(inp["x"] @ inp["W"].T, inp["x"], inp["A"], inp["B"], inp["c"], inp["p"], inp["idx"])
        torch.testing.assert_close(y.float(), ref32(inp), rtol=tol, atol=tol)


if __name__ == "__main__":                 # the interpreter worker: TRITON_INTERPRET=1 is set before triton loads
    assert os.environ.get("TRITON_INTERPRET") == "1"
    from bench.kernels import triton_served
    torch.save({name: compute(triton_served, case[4], inputs(*case)) for name, case in CASES.items()}, sys.argv[1])
