"""Fixtures for the served-format tests: PEFT adapters with non-zero deltas on the tiny base.

`tiny_base` (session, tests/conftest.py) is the tiny seeded Llama folder.
"""
from __future__ import annotations

import pytest
import torch

IDS = torch.randint(3, 500, (2, 20), generator=torch.Generator().manual_seed(0))


def make_peft(base_dir, out_dir, seed: int = 0, **lora_kwargs):
    """Save a PEFT adapter whose lora_B (and DoRA magnitude) are random, so its delta is non-zero."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    kw = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0) | lora_kwargs
    model = get_peft_model(base, LoraConfig(**kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif "lora_magnitude_vector" in n:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))
    model.save_pretrained(out_dir)
    return model.eval()


@pytest.fixture()
def peft_factory(tiny_base, tmp_path):
    """peft_factory(name, **LoraConfig kwargs) -> (saved dir, the live PEFT model)."""
    def make(name="peft", seed=0, **kw):
        d = tmp_path / name
        return d, make_peft(tiny_base, d, seed=seed, **kw)
    return make


@pytest.fixture(scope="session")
def reference(tiny_base):
    return reference_for(tiny_base)


def base_logits(tiny_base, ids=IDS):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)(ids).logits


_REFS = {}


def reference_for(base_dir):
    """A ServedReference per base folder, cached for the session."""
    from hylorada.reference.served import ServedReference
    if str(base_dir) not in _REFS:
        _REFS[str(base_dir)] = ServedReference(base_dir)
    return _REFS[str(base_dir)]
