"""One vLLM engine per session on the tiny Llama (GQA, head_dim 32), with the HyLoRADA plugin, and a
zoo of adapters built with the project's own writers:

    lora      plain PEFT LoRA folder (alpha/r scale, vLLM scales it itself)       r=8
    rslora    plain PEFT rsLoRA folder (alpha/sqrt(r))                            r=4
    dora      PEFT DoRA converted by hylorada.commands.convert_peft.convert_peft (c = m/n)       r=4
    hy_pos    HyLoRADA export: c, w_pos, position bias with 16 buckets up to 256   r=8
    hy_lm     HyLoRADA export: c, position bias (64 buckets) and landmarks (K=4)   r=8
    extra_*   more HyLoRADA/LoRA adapters to force slot swapping

Engine: max_loras=5 (all five adapters fit one batch), max_num_batched_tokens=64 (prompts of 40-90
tokens are prefilled in chunks, mixed with other requests' decode steps), float32.
"""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")

MAX_LORAS = 5
MAX_RANK = 8


def make_peft(base_dir, out_dir, seed: int, b_scale: float = 0.15, **kw):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)                       # PEFT draws lora_A from the global generator: same seed, same adapter
    cfg = dict(r=8, lora_alpha=16, lora_dropout=0.0,
               target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]) | kw
    model = get_peft_model(base, LoraConfig(**cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * b_scale)
            elif "lora_magnitude_vector" in n:
                p.mul_(1 + 0.3 * torch.randn(p.shape, generator=g))
    model.save_pretrained(out_dir)
    return out_dir


def make_hylorada(base_dir, work, name: str, seed: int, b_scale: float = 0.15, **kw):
    """Train-side HyLoRADA model with random non-trivial parts -> native checkpoint -> export (served form)."""
    from hylorada import HyLoRADAConfig, HyLoRADAModel
    from hylorada.commands.export import export
    from tests.helpers import randomize_adapter
    model = HyLoRADAModel.from_pretrained(base_dir, HyLoRADAConfig(**kw)).eval()
    randomize_adapter(model, seed=seed, scale=b_scale)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for n, p in model.adapter_state_dict().items():
            if n.endswith(".landmark.gate"):
                p.fill_(0.8)                      # init 0 would make the read-out vanish
            elif ".landmark." in n:
                p.copy_(torch.randn(p.shape, generator=g))
            elif ".daa." in n:                    # init is the identity (scale 1, bias 0)
                p.add_(torch.randn(p.shape, generator=g) * (0.3 if n.endswith("head_scale") else 1.0))
            elif "norm" in n and ".hylorada." not in n:      # trained RMSNorm weights (train_norms)
                p.mul_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif n.endswith("embed_tokens.weight"):          # trained embedding rows (train_embeddings): a third
                p[::3] += 0.3 * torch.randn(p[::3].shape, generator=g)
    model.save(work / f"{name}-ckpt")
    return export(work / f"{name}-ckpt", work / name, base_dir)


def build_zoo(base_dir, work) -> dict:
    from hylorada.commands.convert_peft import convert_peft
    work.mkdir(parents=True, exist_ok=True)
    zoo = {
        "lora": make_peft(base_dir, work / "lora", seed=1),
        "rslora": make_peft(base_dir, work / "rslora", seed=2, r=4, lora_alpha=6, use_rslora=True),
        "dora": convert_peft(make_peft(base_dir, work / "dora-peft", seed=3, r=4, lora_alpha=8, use_dora=True),
                             work / "dora", base_dir),
        "hy_pos": make_hylorada(base_dir, work, "hy_pos", seed=4, lora_rank=8, num_position_buckets=16,
                                bucket_max_position=256),
        "hy_lm": make_hylorada(base_dir, work, "hy_lm", seed=5, lora_rank=8, landmark_enabled=True, num_landmarks=4),
        "extra_hy": make_hylorada(base_dir, work, "extra_hy", seed=6, lora_rank=4, num_position_buckets=16,
                                  bucket_max_position=128),
        "extra_lora": make_peft(base_dir, work / "extra_lora", seed=7, r=8, lora_alpha=8),
    }
    return {k: str(v) for k, v in zoo.items()}


@pytest.fixture(scope="session")
def zoo(tiny_base, tmp_path_factory):
    return build_zoo(tiny_base, tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def peft_dirs(zoo):
    """The PEFT folders behind lora / rslora / dora (for HF/PEFT comparisons)."""
    from pathlib import Path
    return {"lora": zoo["lora"], "rslora": zoo["rslora"], "dora": str(Path(zoo["dora"]).parent / "dora-peft")}


def load_all(paths: dict, base_dir) -> dict:
    """name -> ServedAdapter of every folder in `paths`, validated against the base (what the reference runs)."""
    from hylorada.format.load import load_served
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(base_dir)
    return {k: load_served(v, base_config=cfg) for k, v in paths.items()}


@pytest.fixture(scope="session")
def served(zoo, tiny_base):
    """name -> ServedAdapter (what the reference runs)."""
    return load_all(zoo, tiny_base)


@pytest.fixture(scope="session")
def reference(tiny_base):
    from hylorada.reference.served import ServedReference
    return ServedReference(tiny_base, dtype=torch.float32)


def make_engine(base_dir, **kw):
    from vllm import LLM
    args = dict(model=str(base_dir), enable_lora=True, max_loras=MAX_LORAS, max_lora_rank=MAX_RANK,
                max_cpu_loras=MAX_LORAS, dtype="float32", max_model_len=256, max_num_batched_tokens=64,
                max_num_seqs=16, kv_cache_memory_bytes=256 << 20, enforce_eager=True, seed=0,
                enable_prefix_caching=False) | kw
    return LLM(**args)


@pytest.fixture(scope="package")
def engine(tiny_base):
    llm = make_engine(tiny_base)
    yield llm
    llm.llm_engine.engine_core.shutdown() if hasattr(llm.llm_engine, "engine_core") else None
    del llm
