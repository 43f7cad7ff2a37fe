"""bench.compare.report: the markdown tables come from comparison.json as written by bench.compare (no engines)."""
from bench.compare.ratios import interleaved_ratios
from bench.compare.report import interleaved_table, main, scaling_table


def _o(tok, ttft):
    return {"output_tok_per_s": tok, "ttft_s": {"p50": ttft}}


def test_interleaved_table_lists_rounds_medians_and_verdicts(tmp_path, capsys):
    runs = {"hylorada": [_o(500, 0.3), _o(480, 0.32)], "vllm-lora": [_o(240, 1.5), _o(250, 1.6)]}
    it = {"reps": 2, "tok_per_s": {s: [o["output_tok_per_s"] for o in v] for s, v in runs.items()},
          **interleaved_ratios(runs)}
    table = interleaved_table({"interleaved": it})
    assert "| hylorada | 500.0 | 480.0 | 490.0 | 310 |" in table
    assert "| hylorada / vllm-lora | 2.00x | 2.08, 1.92 | 0.20x | >= 2.0x | met |" in table
    assert interleaved_table({"interleaved": None}) == ""
    (tmp_path / "comparison.json").write_text(__import__("json").dumps(
        {"systems": {}, "ratios": [], "paired": None, "scaling": {}, "interleaved": it}))
    assert main([str(tmp_path)]) == 0 and "| vllm-lora | 240.0 | 250.0 | 245.0 | 1550 |" in capsys.readouterr().out


def test_scaling_table_shows_cold_and_hot_ttft_per_sweep():
    def pt(x, tok, cold, hot):
        return {"x": x, "overall": {"output_tok_per_s": tok, "e2e_s": {"p99": 1.0},
                                    "ttft_cold_s": {"p99": cold}, "ttft_hot_s": {"p99": hot}}}
    cmp = {"scaling": {"hylorada": {"num_adapters": [pt(8, 600.0, 0.4, 0.1)], "num_adapters_zipf": [pt(8, 650.0, 0.3, 0.1)],
                                    "rate": []},
                       "vllm-lora": {"num_adapters": [pt(8, 300.0, 0.9, 0.2)], "rate": []}}}
    t = scaling_table(cmp, "num_adapters")
    assert t.splitlines()[0].startswith("| distinct adapters (uniform) | hylorada tok/s")
    assert "| 8 | 600.0 | 1000 | 400 / 100 | 300.0 | 1000 | 900 / 200 |" in t
    zipf = scaling_table(cmp, "num_adapters_zipf")                      # a sweep only one system ran
    assert "vllm-lora" not in zipf and "| 8 | 650.0 | 1000 | 300 / 100 |" in zipf
    assert scaling_table(cmp, "rate") == ""


def test_scaling_table_shows_resident_memory_when_every_point_has_it():
    def pt(x, rss=None):
        d = {"x": x, "overall": {"output_tok_per_s": 10.0, "e2e_s": {"p99": 1.0}}}
        return d | ({"rss_mb": rss} if rss is not None else {})
    cmp = {"scaling": {"hylorada": {"rate": [pt(1, 2048.4), pt(2, 2100.6)]}, "vllm-lora": {"rate": [pt(1, 3000.0), pt(2, 3001.0)]}}}
    t = scaling_table(cmp, "rate").splitlines()
    assert t[0] == "| rate req/s | hylorada tok/s | hylorada p99 e2e ms | hylorada RSS MiB | vllm-lora tok/s | vllm-lora p99 e2e ms | vllm-lora RSS MiB |"
    assert t[1] == "|---|" + "---:|" * 6 and t[3] == "| 2 | 10.0 | 1000 | 2101 | 10.0 | 1000 | 3001 |"
    cmp["scaling"]["vllm-lora"]["rate"][1].pop("rss_mb")                  # one point without: no column at all
    assert "RSS" not in scaling_table(cmp, "rate")
