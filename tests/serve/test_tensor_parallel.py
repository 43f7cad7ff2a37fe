"""`--tensor-parallel-size 2` on vLLM's CPU backend (issue 19 item 3): a server of its own, 2 worker processes, the
demo adapters (PEFT LoRA, converted DoRA, exported HyLoRADA with c per layer and the position bias), every greedy
answer equal to ServedReference (HF, float32, one process). The slicing the layers do under TP (c and the position
scale like B's rows on column-parallel layers, applied after the all-reduce on row-parallel ones) is what this
checks end to end; tests/patches/test_layers.py checks it as pure functions."""
from __future__ import annotations

import httpx
import pytest

from .conftest import API_KEY, fresh_adapters, start, stop

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
DEMO = ("demo-lora", "demo-dora", "demo-hylorada")
PROMPTS = [[5, 77, 140, 33, 9], [300, 12, 45, 7, 7, 81, 2]]
N_NEW = 8


def test_tensor_parallel_2_answers_equal_the_reference(demo_files, monkeypatch):
    from hylorada.format.load import load_served
    from hylorada.reference.served import ServedReference

    root, base, built = demo_files
    adapters = fresh_adapters(root, built)
    ref = ServedReference(base)
    want = {name: [ids for ids, _ in ref.greedy(PROMPTS, [load_served(adapters / name) if name else None]
                                                 * len(PROMPTS), N_NEW)] for name in (None, *DEMO)}
    # vLLM's CPU workers bind one NUMA node each unless told which cores; hylorada-serve tells them (launch.cpu_binds)
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    srv = start(root, adapters, base, built, extra=("--tensor-parallel-size", "2"))
    try:
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as http:
            for name in (None, *DEMO):
                got = []
                for p in PROMPTS:
                    r = http.post("/v1/completions", json={"model": name or "tiny-llama", "prompt": p,
                                                           "max_tokens": N_NEW, "temperature": 0, "ignore_eos": True,
                                                           "return_token_ids": True})
                    assert r.status_code == 200, r.text
                    got.append(r.json()["choices"][0]["token_ids"])
                assert got == want[name], (name, got, want[name])
        assert "tensor_parallel_size=2" in srv.log.read_text(errors="replace").replace(" ", "")
    finally:
        stop(srv)
