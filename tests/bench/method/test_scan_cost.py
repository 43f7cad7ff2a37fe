"""bench.method.scan_cost: every count's folders are built and scanned complete, timed the asked number of times,
the core shares follow from the CPU time, the JSON is written and printed last; bad arguments exit 2."""
from __future__ import annotations

import json

import pytest

from bench.method.scan_cost import main, measure


def test_measure_scans_every_count():
    points = measure([3, 10], reps=2)
    assert [p["folders"] for p in points] == [3, 10]
    for p in points:
        assert p["wall_ms"] > 0 and p["cpu_ms"] >= 0
        assert p["core_share_every_0.5s"] == round(p["cpu_ms"] / 500, 4)
        assert p["core_share_every_5s"] == round(p["cpu_ms"] / 5000, 4)


def test_main_writes_the_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["--folders", "4", "--reps", "1", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written == json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert written["reps"] == 1 and written["points"][0]["folders"] == 4


@pytest.mark.parametrize("argv", [["--folders", "x"], ["--folders", "0"], ["--reps", "0"]])
def test_bad_arguments_exit_2(argv, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--out", str(tmp_path / "r.json")])
    assert e.value.code == 2
