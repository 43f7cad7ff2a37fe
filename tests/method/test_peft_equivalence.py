"""Special cases of the blend equal PEFT 0.21 exactly (float32, 1e-5): outputs and gradients.

beta -> 0, g = 1, p == 1  is PEFT DoRA with rsLoRA scaling;   beta -> 1, p == 1  is PEFT LoRA (rsLoRA).
"""
import pytest
import torch
from peft import LoraConfig, get_peft_model

from hylorada import HyLoRADAConfig, HyLoRADAModel
from hylorada.config import LLAMA_PROJECTIONS

from tests.helpers import randomize_adapter

SIDE = {"dora": dict(residual_weight_init=-1e4, magnitude_gate_init=1e4),   # sigmoid -> exactly 0 / 1 in fp32
        "lora": dict(residual_weight_init=1e4)}


def _pair(tiny_base, side, rank=4, alpha=8.0, targets=LLAMA_PROJECTIONS):
    from transformers import AutoModelForCausalLM
    cfg = HyLoRADAConfig(lora_rank=rank, lora_alpha=alpha, position_bias_enabled=False, target_modules=targets, **SIDE[side])
    ours = HyLoRADAModel.from_pretrained(tiny_base, cfg)
    randomize_adapter(ours, seed=3)
    with torch.no_grad():   # randomize_adapter moved the scalars too: put the blend back on the side under test
        for name, p in ours.adapter_state_dict().items():
            for key, v in SIDE[side].items():
                if name.endswith(key.replace("_init", "")):
                    p.fill_(v)
    peft_base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    theirs = get_peft_model(peft_base, LoraConfig(r=rank, lora_alpha=alpha, use_rslora=True, use_dora=(side == "dora"),
                                                  target_modules=list(targets), lora_dropout=0.0))
    pairs = {}
    peft_params = dict(theirs.named_parameters())
    with torch.no_grad():
        for name, layer in ours.hylorada_layers().items():
            a = peft_params[f"base_model.model.{name}.lora_A.default.weight"]
            b = peft_params[f"base_model.model.{name}.lora_B.default.weight"]
            a.copy_(layer.hylorada.lora_A)
            b.copy_(layer.hylorada.lora_B)
            pairs[f"{name}.A"] = (layer.hylorada.lora_A, a)
            pairs[f"{name}.B"] = (layer.hylorada.lora_B, b)
            if side == "dora":
                m = peft_params[f"base_model.model.{name}.lora_magnitude_vector.default.weight"]
                m.copy_(layer.hylorada.magnitude)
                pairs[f"{name}.m"] = (layer.hylorada.magnitude, m)
    return ours, theirs, pairs


@pytest.mark.parametrize("side", ["dora", "lora"])
def test_equals_peft_outputs_and_gradients(tiny_base, side):
    ours, theirs, pairs = _pair(tiny_base, side)
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    out_ours = ours(input_ids=ids, labels=ids)
    out_theirs = theirs(input_ids=ids, labels=ids)
    torch.testing.assert_close(out_ours.logits, out_theirs.logits, rtol=1e-5, atol=1e-5)
    # the comparison is not vacuous: the adapter moves the logits well past the tolerance
    from transformers import AutoModelForCausalLM
    base_logits = AutoModelForCausalLM.from_pretrained(tiny_base)(ids).logits
    assert (out_ours.logits - base_logits).abs().max() > 1e-2
    out_ours.loss.backward()
    out_theirs.loss.backward()
    for key, (mine, peft_p) in pairs.items():
        assert mine.grad is not None and mine.grad.abs().max() > 0, key
        torch.testing.assert_close(mine.grad, peft_p.grad, rtol=1e-5, atol=1e-5, msg=key)


def test_equals_peft_on_a_subset_of_projections(tiny_base):
    ours, theirs, _ = _pair(tiny_base, "dora", rank=8, alpha=16.0, targets=("q_proj", "v_proj", "down_proj"))
    ids = torch.randint(0, 500, (1, 16), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
