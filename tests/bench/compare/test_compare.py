"""bench.compare.ratios / bench.compare.servers plumbing, no engines: ratios, launch specs, adapter folders."""
from pathlib import Path

from bench.compare.ratios import interleaved_ratios, ratio_table
from bench.compare.servers import UPSTREAM_PLUGINS, link_adapter_dir, spec_for


def _sys(tok, ttft):
    return {"overall": {"output_tok_per_s": tok, "ttft_s": {"p50": ttft}}}


def test_ratio_table():
    rows = {r["ratio"]: r for r in ratio_table({"hylorada": _sys(300, 0.2), "hylorada-lora": _sys(310, 0.2),
                                                "vllm-lora": _sys(100, 0.4)})}
    r = rows["hylorada / vllm-lora"]
    assert r["output_tok_per_s"] == 3.0 and r["ttft_p50"] == 0.5 and r["met"] is True
    assert rows["hylorada / hylorada-lora"]["met"] is True          # 0.968 >= 0.95
    assert "hylorada / peft-single" not in rows                     # only systems that ran


def test_interleaved_ratios_use_medians_and_keep_every_round():
    runs = {"hylorada": [_sys(500, 0.3)["overall"], _sys(200, 0.3)["overall"], _sys(480, 0.2)["overall"]],
            "vllm-lora": [_sys(250, 1.0)["overall"], _sys(100, 2.0)["overall"], _sys(260, 1.0)["overall"]]}
    out = interleaved_ratios(runs)
    assert out["median_tok_per_s"] == {"hylorada": 480, "vllm-lora": 250}
    r = {x["ratio"]: x for x in out["ratios"]}["hylorada / vllm-lora"]
    assert r["output_tok_per_s"] == 480 / 250 and r["per_rep"] == [2.0, 2.0, 480 / 260]
    assert r["min_per_rep"] == 480 / 260 and r["ttft_p50"] == 0.3 and r["met"] is False    # 1.92 < 2
    assert [x["ratio"] for x in out["ratios"]] == ["hylorada / vllm-lora"]


def test_upstream_vllm_excludes_our_plugin(tmp_path):
    ad = {"peft": {"a0": tmp_path / "p0"}}
    spec = spec_for("vllm-lora", tmp_path / "base", 9000, ad, tmp_path, 8, 8)
    plugins = spec.env["VLLM_PLUGINS"].split(",")
    assert "hylorada" not in plugins and plugins == UPSTREAM_PLUGINS.split(",")
    assert "vllm.entrypoints.openai.api_server" in spec.cmd and "--enable-lora" in spec.cmd
    assert spec.cmd[spec.cmd.index("--host") + 1] == "127.0.0.1"
    assert f"a0={tmp_path / 'p0'}" in spec.cmd
    base = spec_for("vllm-base", tmp_path / "base", 9000, ad, tmp_path, 8, 8)
    assert "--enable-lora" not in base.cmd and base.models == ["base"]


def test_link_adapter_dir(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text("{}")
    (src / "bench_stamp.json").write_text("{}")
    d = link_adapter_dir(tmp_path / "dir", {"a0": src, "a1": src})
    assert sorted(p.name for p in d.iterdir()) == ["a0", "a1"]
    assert [p.name for p in (d / "a0").iterdir()] == ["adapter_config.json"]
    assert Path(d / "a1" / "adapter_config.json").read_text() == "{}"


def test_cli_end_to_end_with_the_runs_stubbed(tmp_path, monkeypatch):
    """`python -m bench.compare --systems ...` gets from its runs to comparison.json and the last JSON line (the
    house move had left `plot_cdfs` unimported: every run with --systems died at its very end)."""
    import json

    from bench.compare import cli

    rec = [{"ttft_s": 0.1, "e2e_s": 0.5, "ok": True}]
    overall = {"output_tok_per_s": 10.0, "ttft_s": {"p50": 0.1}}
    monkeypatch.setattr(cli.build, "resolve_base", lambda base: (tmp_path / "base", tmp_path / "cache"))
    monkeypatch.setattr(cli.build, "build_peft", lambda base, n, cache: [tmp_path / f"p{i}" for i in range(n)])
    monkeypatch.setattr(cli, "run_system", lambda s, *a: {"system": s, "overall": overall, "records": rec})
    drawn = []
    monkeypatch.setattr(cli, "plot_cdfs", lambda records, path, title: drawn.append(sorted(records)))
    assert cli.main(["--out", str(tmp_path / "out"), "--systems", "vllm-base,vllm-lora", "--no-scaling",
                     "--paired-reps", "0"]) == 0
    out = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert set(out["systems"]) == {"vllm-base", "vllm-lora"} and drawn == [["vllm-base", "vllm-lora"]]
