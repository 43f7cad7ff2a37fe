"""patches/logits.py (no engine): vLLM 0.32's LogitsProcessorWithLoRA indexes logits rows by request, so a
prompt_logprobs step (a row per prompt token) crashed the worker; with no lm_head weights in any slot the
patched layer returns the plain logits for any row count, and vLLM's own path runs once a slot has some."""
from __future__ import annotations

import pytest
import torch

V, H, S, R = 96, 32, 2, 8


class _Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(V, H, generator=torch.Generator().manual_seed(0)))
        self.tp_size = 1

    def quant_method(self):
        return None


@pytest.fixture(scope="module")
def layer():
    from vllm.lora.layers.logits_processor import LogitsProcessorWithLoRA
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    from vllm.model_executor.layers.logits_processor import LogitsProcessor

    from vllm.config import VllmConfig, set_current_vllm_config

    from hylorada_patches import logits
    with set_current_vllm_config(VllmConfig()):
        base = LogitsProcessor(V)
    lp = LogitsProcessorWithLoRA.__new__(LogitsProcessorWithLoRA)
    torch.nn.Module.__init__(lp)
    lp.base_layer, lp.sharded_to_full_mapping_gpu = base, None
    lp.lora_a_stacked = torch.zeros(S, 1, R, H)
    lp.lora_b_stacked = torch.zeros(S, 1, V, R)

    class Punica:                                  # the CPU wrapper's add_lora_logits, 2 requests in the batch
        sampler_indices = torch.tensor([0, 1])
        add_lora_logits = PunicaWrapperCPU.add_lora_logits
    lp.punica_wrapper = Punica()
    stock = getattr(LogitsProcessorWithLoRA._get_logits, "__wrapped__", LogitsProcessorWithLoRA._get_logits)  # vLLM's own,
    # even when an earlier test's apply() installed the wrapper already (wrap.py keeps it as __wrapped__)
    logits.install()
    return lp, stock


def _head_apply(head, h, bias=None):
    return h @ head.weight.t()


def test_prompt_logprob_rows_crash_stock_vllm_and_not_the_patched_layer(layer, monkeypatch):
    lp, stock = layer
    head = _Head()
    monkeypatch.setattr(type(lp.base_layer), "_apply_head", lambda self, lm_head, h, b: _head_apply(lm_head, h))
    monkeypatch.setattr(type(lp.base_layer), "_gather_logits", lambda self, logits: logits)   # one rank
    h = torch.randn(1899, H)                                  # every prompt token's hidden state
    with pytest.raises(RuntimeError, match="einsum"):
        stock(lp, h, head)                                    # vLLM 0.32: sampler_indices has one row per request
    out = lp._get_logits(h, head)
    torch.testing.assert_close(out, h @ head.weight.t())


def test_a_slot_with_lm_head_weights_takes_vllms_path(layer, monkeypatch):
    lp, _ = layer
    head = _Head()
    monkeypatch.setattr(type(lp.base_layer), "_apply_head", lambda self, lm_head, h, b: _head_apply(lm_head, h))
    monkeypatch.setattr(type(lp.base_layer), "_gather_logits", lambda self, logits: logits)   # one rank
    a, b = torch.randn(R, H), torch.randn(V, R)
    lp.set_lora(1, a, b)
    try:
        h = torch.randn(2, H)
        out = lp._get_logits(h, head)
        want = h @ head.weight.t()
        want[1] += (h[1] @ a.t()) @ b.t()
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    finally:
        lp.reset_lora(1)
    assert not lp.__dict__["_hylorada_live"]
