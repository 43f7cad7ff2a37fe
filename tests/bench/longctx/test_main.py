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


def test_the_gpu_setting_runs_on_a_small_shape_here(tiny_base, tmp_path):
    """The GPU command's options (--rope, --bf16, --budget-s, --device) on the CPU, tiny base, small lengths: RoPE
    scaled for the base row and every method (positions past the base's own context are scored), and the budget
    skips the methods that would start after it."""
    from transformers import AutoConfig
    native = AutoConfig.from_pretrained(tiny_base).max_position_embeddings
    long = 2 * native
    path = main(["--base", str(tiny_base), "--methods", "LoRA,HyLoRADA + position scale", "--seeds", "0,1",
                 "--train-len", "64", "--eval-lens", f"64,{long}", "--steps", "1", "--batch", "1", "--eval-n", "1",
                 "--rope", "linear:4", "--bf16", "--device", "cpu", "--budget-s", "0", "--out", str(tmp_path)])
    doc = json.loads(path.read_text())
    assert doc["rope"] == "linear:4" and doc["bf16"] and doc["device"] == "cpu"
    assert doc["skipped"] == ["seed 0 LoRA", "seed 0 HyLoRADA + position scale", "seed 1 LoRA",
                              "seed 1 HyLoRADA + position scale"]
    assert set(doc["rows"]["base (no training)"][0]["eval"]["passkey"]) == {"64", str(long)}
    assert "Skipped (--budget-s)" in (tmp_path / "table.md").read_text()
    path = main(["--base", str(tiny_base), "--methods", "LoRA,HyLoRADA + position scale", "--seeds", "0",
                 "--train-len", "64", "--eval-lens", str(long), "--steps", "1", "--batch", "1", "--eval-n", "1",
                 "--rope", "linear:4", "--bf16", "--out", str(tmp_path / "run")])
    doc = json.loads(path.read_text())
    assert doc["skipped"] == [] and list(doc["rows"]) == ["base (no training)", "LoRA", "HyLoRADA + position scale"]


def test_rope_scaling_reaches_every_method(tiny_base):
    from bench.longctx.methods import base_model
    native = base_model(tiny_base).config.max_position_embeddings
    for name in ("LoRA", "DoRA", "HyLoRADA (blend)"):
        model, _ = build(name, tiny_base, 4, 0, rope=("linear", 4.0))
        cfg = model.base.config if name.startswith("HyLoRADA") else model.config
        assert cfg.max_position_embeddings == 4 * native, name
        assert cfg.rope_parameters["rope_type"] == "linear" and cfg.rope_parameters["factor"] == 4.0, name
