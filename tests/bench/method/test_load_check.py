"""bench.method.load_check on the "tiny" base: both ways load and check the same adapter (the stamped one behind a
stamp that verifies, the plain one without), every way is timed the asked number of times, the JSON says so."""
from __future__ import annotations

import json

from bench.compare.adapters import build_hylorada
from bench.method.load_check import main, measure
from hylorada.tiny import build_tiny_llama


def test_measure_times_every_way(tmp_path):
    base = build_tiny_llama(tmp_path / "base", "tiny")
    adapters = build_hylorada(base, 2, tmp_path / "cache")
    res = measure(base, adapters, reps=3)
    assert set(res) == {"full", "stamped", "read", "full_over_stamped", "bytes_per_adapter", "adapters"}
    assert all(res[w]["n"] == 2 * 3 and res[w]["median_ms"] > 0 for w in ("full", "stamped", "read"))
    assert res["adapters"] == 2 and res["bytes_per_adapter"] > 0
    assert res["full_over_stamped"] == round(res["full"]["median_ms"] / res["stamped"]["median_ms"], 2)


def test_main_writes_the_json(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)                    # the bench cache (.cache/bench) under tmp_path
    base = build_tiny_llama(tmp_path / "base", "tiny")
    out = tmp_path / "r.json"
    assert main(["--base", str(base), "--adapters", "1", "--reps", "2", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written == json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert written["reps"] == 2 and written["stamped"]["n"] == 2
