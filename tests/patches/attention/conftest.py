"""One vLLM engine (with the HyLoRADA plugin) for tests/patches/attention, and adapters exported by the
project's own writer (HyLoRADAModel -> native checkpoint -> hylorada.commands.export):

    daa       HyLoRADA + PositionalDAA (random head scales and bucket biases), full attention
    sink      HyLoRADA, attention mode `sink`: 4 sink tokens + a window of 16
    sink_daa  HyLoRADA + DAA, `sink` with 4 sinks + a window of 24
    s2        HyLoRADA, attention mode `s2`: group ratio 0.25, 4 sinks
    plain     HyLoRADA with none of these (full attention), to mix in

Engine: max_loras=5 (all in one batch), max_num_batched_tokens=64 (prompts of 40-95 tokens are
prefilled in chunks beside other requests' decode steps), float32, prefix caching on (vLLM's default), KV blocks of
32 tokens, stats on (the KV-cache usage gauge is read between steps).
"""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")

SINKS, WINDOW = 4, 16
BLOCK, NUM_BLOCKS = 32, 160          # KV cache: 160 blocks of 32 tokens (kv-usage metric -> blocks held)
ADAPTERS = {
    "daa": dict(daa_enabled=True),
    "sink": dict(attention_mode="sink", s2_sink_tokens=SINKS, sink_window=WINDOW),
    "sink_daa": dict(daa_enabled=True, attention_mode="sink", s2_sink_tokens=SINKS, sink_window=24),
    "s2": dict(attention_mode="s2", s2_group_size_ratio=0.25, s2_sink_tokens=SINKS),
    "plain": dict(),
}


def make_adapter(base_dir, work, name: str, seed: int, **kw):
    from hylorada import HyLoRADAConfig, HyLoRADAModel
    from hylorada.commands.export import export
    from tests.helpers import randomize_adapter
    model = HyLoRADAModel.from_pretrained(base_dir, HyLoRADAConfig(lora_rank=8, **kw)).eval()
    randomize_adapter(model, seed=seed, scale=0.15)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for n, p in model.adapter_state_dict().items():
            if ".daa." in n:                    # init is the identity (scale 1, bias 0)
                p.add_(torch.randn(p.shape, generator=g) * (0.3 if n.endswith("head_scale") else 1.0))
    model.save(work / f"{name}-ckpt")
    return str(export(work / f"{name}-ckpt", work / name, base_dir))


@pytest.fixture(scope="session")
def attn_zoo(tiny_base, tmp_path_factory):
    work = tmp_path_factory.mktemp("attn_zoo")
    return {name: make_adapter(tiny_base, work, name, seed=10 + i, **kw) for i, (name, kw) in enumerate(ADAPTERS.items())}


@pytest.fixture(scope="session")
def attn_served(attn_zoo, tiny_base):
    from tests.patches.conftest import load_all
    return load_all(attn_zoo, tiny_base)


@pytest.fixture(scope="session")
def attn_reference(tiny_base):
    from hylorada.reference.served import ServedReference
    return ServedReference(tiny_base, dtype=torch.float32)


@pytest.fixture(scope="package")
def attn_engine(tiny_base):
    from vllm import LLM
    llm = LLM(model=str(tiny_base), enable_lora=True, max_loras=5, max_lora_rank=8, max_cpu_loras=5, dtype="float32",
              max_model_len=512, max_num_batched_tokens=64, max_num_seqs=16, kv_cache_memory_bytes=256 << 20,
              enforce_eager=True, seed=0, enable_prefix_caching=True, block_size=BLOCK, num_gpu_blocks_override=NUM_BLOCKS,
              disable_log_stats=False)
    yield llm
    llm.llm_engine.engine_core.shutdown() if hasattr(llm.llm_engine, "engine_core") else None
    del llm
