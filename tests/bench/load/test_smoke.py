"""bench.load.serve against the transformers+PEFT baseline server on 127.0.0.1 (tiny model, a handful of requests)."""
import signal
import sys
from pathlib import Path

import pytest

from bench.load.config import BenchConfig
from bench.load.serve import run_bench
from bench.proc import free_port, http_ok, launch, stop, wait_ready

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def peft_adapter(tiny_base, tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("peft") / "ad"
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module", params=["single", "mixed"])
def server(request, tiny_base, peft_adapter, tmp_path_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("peft-server") / "server.log"
    cmd = [sys.executable, "-m", "bench.compare.peft_server", "--base", str(tiny_base), "--adapter",
           f"ad={peft_adapter}", "--mode", request.param, "--max-batch", "4", "--threads", "1", "--port", str(port)]
    proc = launch(cmd, log, cwd=ROOT)
    try:
        why = wait_ready(proc, lambda: http_ok(url + "/health", timeout_s=1), 120, poll_s=0.5)
        if why is not None:
            pytest.fail(f"PEFT server {why}:\n{log.read_text(errors='replace')[-2000:]}")
        yield url
    finally:
        stop(proc, signal.SIGKILL, timeout_s=30, settle_s=0)


def test_bench_against_peft_server(server, tmp_path):
    cfg = BenchConfig(url=server, adapters=("ad", "base"), alpha=0.5, rate=20.0, num_requests=6, max_concurrency=3,
                      prompt_len=(4, 9), output_len=(3, 5), seed=1, warmup=1, max_total_s=120, request_timeout_s=60,
                      label="smoke", out_dir=str(tmp_path), progress=False)
    res = run_bench(cfg)
    o = res["overall"]
    assert o["errors"] == 0, res["error_samples"]
    assert o["completed"] == 6
    assert [r["output_tokens"] for r in res["requests"]] == [r["output_len_requested"] for r in res["requests"]]
    assert all(r["ttft_s"] > 0 and r["e2e_s"] >= r["ttft_s"] for r in res["requests"])
    assert o["output_tok_per_s"] > 0 and set(res["per_adapter"]) <= {"ad", "base"}
    assert (tmp_path / "smoke.json").is_file() and (tmp_path / "smoke_cdf.png").is_file()


def test_unknown_model_is_an_error_not_a_hang(server):
    cfg = BenchConfig(url=server, adapters=("nope",), num_requests=2, warmup=0, output_len=(2, 2), prompt_len=(2, 2),
                      max_total_s=60, request_timeout_s=30, progress=False)
    res = run_bench(cfg, write=False)
    assert res["overall"]["errors"] == 2 and "404" in res["error_samples"][0]


def test_cli_sweep_last_line_is_json(server, tmp_path, capsys):
    import json

    from bench.load import serve
    rc = serve.main(["--url", server, "--adapters", "ad,base", "--num-requests", "3", "--prompt-len", "4",
                     "--output-len", "2,3", "--warmup", "0", "--no-progress", "--out-dir", str(tmp_path),
                     "--label", "sw", "--sweep", "rate=50,inf", "--max-total", "60"])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["sweep"] == "rate" and [p["x"] for p in last["points"]] == [50.0, "inf"]
    assert all(p["errors"] == 0 for p in last["points"])
    assert (tmp_path / "sw_sweep_rate.json").is_file() and (tmp_path / "sw_sweep_rate.png").is_file()
