"""The served-layer kernel benchmark's fast paths equal the per-token loop (CPU, float32; timings need a GPU)."""
import json
import sys

import torch

from bench.kernels import served_layer as k


def test_fast_paths_match_the_loop():
    k.check({"gather": k.gather, "grouped": k.grouped})


def test_segments_are_sorted_runs():
    assert k.segments(torch.tensor([0, 0, 1, 3, 3, 3])) == [(0, 0, 2), (1, 2, 3), (3, 3, 6)]


def test_reference_leaves_base_tokens_alone():
    inp = k.make_inputs(4, 8, 6, 2, 2, torch.float32, "cpu")
    inp["idx"] = torch.tensor([-1, 0, -1, 1])
    y = k.reference(**inp)
    torch.testing.assert_close(y[[0, 2]], inp["x"][[0, 2]] @ inp["W"].T)
    x1 = inp["x"][1]
    torch.testing.assert_close(y[1], inp["c"][0] * (inp["W"] @ x1 + inp["p"][1] * inp["B"][0] @ (inp["A"][0] @ x1)))


def test_cpu_smoke_writes_results(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)                  # the CPU path must not need triton
    if not torch.cuda.is_available():
        assert k.fused_method() is None
    assert k.main(["--cpu-smoke", "--tokens", "1,8", "--out", str(tmp_path)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["device"] == "cpu" and set(last) >= {"gather", "grouped", "peft_dora"}
    assert (tmp_path / "kernels_cpu-smoke.json").is_file() and (tmp_path / "kernels_cpu-smoke.png").is_file()
