"""python -m bench.longctx on the tiny base, three methods, one seed, two steps: every method trains (its answer loss
moves), the base row and each method row are scored on the same held-out examples at every length and depth, and the
table, the depth and curve plots and the JSON (with the command) are written."""
import json

import pytest

from bench.longctx.__main__ import main
from bench.longctx.methods import METHODS, build


def test_a_small_run_writes_the_table_and_plots(tiny_base, tmp_path):
    path = main(["--base", str(tiny_base), "--methods", "LoRA,LongLoRA-style,HyLoRADA + sinks", "--seeds", "0",
                 "--train-len", "64", "--eval-lens", "64,96", "--steps", "2", "--batch", "2", "--eval-n", "2",
                 "--out", str(tmp_path)])
    doc = json.loads(path.read_text())
    assert list(doc["rows"]) == ["base (no training)", "LoRA", "LongLoRA-style", "HyLoRADA + sinks"]
    assert doc["command"].startswith("python -m bench.longctx --base")
    for name, runs in doc["rows"].items():
        ev = runs[0]["eval"]
        assert set(ev["passkey"]) == set(ev["needle"]) == {"64", "96"} and len(ev["needle"]["96"]) == 5
        assert ev["perplexity"] > 1
        if name != "base (no training)":
            assert len(runs[0]["losses"]) == 2 and runs[0]["trainable"] > 0
    rows = doc["rows"]
    assert rows["LongLoRA-style"][0]["trainable"] > rows["LoRA"][0]["trainable"] + 512 * 128 - 1   # + embeddings
    table = (tmp_path / "table.md").read_text()
    assert "| LongLoRA-style |" in table and "lost-in-the-middle" in table
    assert (tmp_path / "depth.png").stat().st_size > 0 and (tmp_path / "curves.png").stat().st_size > 0


def test_every_method_builds_and_an_unknown_one_is_refused(tiny_base):
    counts = {name: sum(p.numel() for p in build(name, tiny_base, 4, 0)[1]) for name in METHODS}
    assert counts["LoRA"] == counts["rsLoRA"] < counts["DoRA"] < counts["HyLoRADA + DAA"]
    with pytest.raises(ValueError, match="unknown method 'QLoRA'"):
        build("QLoRA", tiny_base, 4, 0)
