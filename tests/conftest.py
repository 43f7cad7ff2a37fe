"""Shared fixtures: a tiny seeded Llama base built once per session (no model hub here)."""
from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import make_peft, reference_for

os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """Path to a tiny Llama-architecture model folder (GQA, head_dim 32, vocab 512)."""
    from hylorada.tiny import build_tiny_llama
    return build_tiny_llama(tmp_path_factory.mktemp("bases") / "tiny-llama", "tiny")


@pytest.fixture()
def base_model(tiny_base):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()


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
