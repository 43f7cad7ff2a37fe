"""bench/kernels/gpu_check.py in its CPU dry mode: the compile check under vLLM's guard policy runs and passes,
and nothing is written under bench/results/gpu (no GPU result is ever produced off a GPU)."""
from __future__ import annotations

import json

from bench.kernels import gpu_check


def test_dry_run_checks_and_writes_nothing(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "RESULT", tmp_path / "gpu_check.json")
    assert gpu_check.main(["--dry", "--replays", "3"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["ok"] and last["device"] == "cpu (dry)" and set(last["compile"]) == {"1", "16"}
    assert not (tmp_path / "gpu_check.json").exists()
