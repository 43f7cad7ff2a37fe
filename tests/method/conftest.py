"""Fixtures for the long-context parts and the training entry (tests/method/).

The session-wide `tiny_base` (a seeded tiny Llama folder) comes from tests/conftest.py.
"""
from __future__ import annotations

import pytest
import torch


@pytest.fixture()
def load_base(tiny_base):
    """load_base(hf_config=None) -> a fresh float32 LlamaForCausalLM in eval mode (optionally with a modified config)."""
    from transformers import AutoModelForCausalLM

    def load(hf_config=None):
        kw = {"config": hf_config} if hf_config is not None else {}
        return AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32, **kw).eval()
    return load


@pytest.fixture()
def randomize_daa():
    """randomize_daa(module_or_model, seed): give every PositionalDAA non-trivial values."""
    from hylorada.method.daa import PositionalDAA

    def go(model, seed=0):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, PositionalDAA):
                    m.head_scale.copy_(1 + 0.3 * torch.randn(m.head_scale.shape, generator=g))
                    m.bucket_bias.copy_(torch.randn(m.bucket_bias.shape, generator=g))
        return model
    return go
