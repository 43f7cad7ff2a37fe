"""`hylorada-serve --demo`: a tiny seeded Llama base and one demo adapter of each kind, built once and cached.

    <cache>/tiny-llama/              hylorada.tiny.build_tiny_llama(..., "tiny")
    <cache>/adapters/demo-lora/      a PEFT LoRA (random A and B), converted to the served form
    <cache>/adapters/demo-dora/      a PEFT DoRA with a perturbed magnitude, converted (c = m / ||W + s B A||)
    <cache>/adapters/demo-hylorada/  a HyLoRADA model (position bias on) with perturbed parameters, exported

The weights are random (seeded), not trained: the demo shows serving, not quality. Without the engine patches
(patches/) vLLM serves the DoRA and HyLoRADA folders as their plain-LoRA part.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

from .config import ServeConfig

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hylorada" / "serve-demo"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
DEMO_VLLM_ARGS = ("--dtype", "float32", "--max-model-len", "2048")     # before the user's own: theirs win


def demo_config(config: ServeConfig) -> ServeConfig:
    """`config` serving the demo: the demo base and adapters (built once), float32, 2048 positions."""
    base, adapters = prepare(config.cache_dir)
    return replace(config, base=str(base), adapters=str(adapters), vllm_args=DEMO_VLLM_ARGS + config.vllm_args)


def prepare(cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Build (once) and return (base_dir, adapters_dir)."""
    from hylorada.tiny import build_tiny_llama

    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    base = build_tiny_llama(cache / "tiny-llama", "tiny")
    adapters = cache / "adapters"
    adapters.mkdir(parents=True, exist_ok=True)
    for name, build in (("demo-lora", peft_adapter), ("demo-dora", peft_adapter), ("demo-hylorada", hylorada_adapter)):
        if not (adapters / name / "adapter_model.safetensors").exists():
            print(f"building {adapters / name} ...", flush=True)
            build(base, adapters / name, dora=name == "demo-dora", seed=len(name))
    return base, adapters


def peft_adapter(base: Path, out: Path, dora: bool = False, seed: int = 0, rank: int = 8) -> Path:
    """A PEFT LoRA/DoRA with random (seeded) weights on `base`, written in the served form at `out`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False, use_dora=dora)
    peft = get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.mul_(0.5)
            if "lora_magnitude_vector" in n:
                p.mul_(1 + 0.2 * torch.randn_like(p))
    from hylorada.commands.convert_peft import convert_peft

    with tempfile.TemporaryDirectory() as tmp:
        peft.save_pretrained(tmp)
        return convert_peft(tmp, out, base)


def hylorada_adapter(base: Path, out: Path, dora: bool = False, seed: int = 0, rank: int = 8) -> Path:
    """A HyLoRADA adapter with position bias and perturbed (seeded) parameters, exported to `out`."""
    import torch

    from hylorada import HyLoRADAConfig, HyLoRADAModel
    from hylorada.format.checkpoint import save_checkpoint
    from hylorada.commands.export import export

    torch.manual_seed(seed)
    model = HyLoRADAModel.from_pretrained(base, HyLoRADAConfig(lora_rank=rank, lora_alpha=float(rank),
                                                               target_modules=tuple(TARGETS),
                                                               position_bias_enabled=True))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p) * (p.abs().mean() + 0.05))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(model, Path(tmp) / "ckpt")
        return export(ckpt, out, base_dir=base)
