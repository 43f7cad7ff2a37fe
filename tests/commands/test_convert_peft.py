"""convert-peft: PEFT LoRA / rsLoRA / DoRA adapters become the served form with no loss.

Each case: a PEFT adapter with a non-zero delta -> convert -> ServedReference logits equal
PEFT's own forward (float32, 1e-5); the converted LoRA part is a plain PEFT LoRA with scale 1.
"""
import json

import pytest
import torch

from hylorada.commands.convert_peft import convert_peft
from hylorada.format.layout import AdapterError
from hylorada.format.load import load_served
from tests.helpers import IDS, base_logits

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CASES = {
    "lora": dict(),
    "rslora": dict(use_rslora=True, lora_alpha=6),
    "dora": dict(use_dora=True),
    "dora_rslora_all": dict(use_dora=True, use_rslora=True, target_modules=ALL),
    "lora_patterns": dict(target_modules=["k_proj", "o_proj", "up_proj"], rank_pattern={"layers.1.self_attn.o_proj": 2},
                          alpha_pattern={"up_proj": 3}),
    "dora_patterns": dict(use_dora=True, target_modules=["gate_proj"], rank_pattern={"layers.0.mlp.gate_proj": 8}),
    "lora_bias_all_no_base_bias": dict(bias="all"),   # Llama has no biases: nothing extra is saved
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_convert_equals_peft(tiny_base, peft_factory, reference, tmp_path, case):
    src, peft_model = peft_factory(case, **CASES[case])
    out = convert_peft(src, tmp_path / "served", tiny_base)
    ad = load_served(out, base_config=reference.model.config)
    assert ad.kind == ("dora" if CASES[case].get("use_dora") else "lora")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["lora_alpha"] == cfg["r"] == ad.rank and cfg["use_rslora"] is False
    with torch.no_grad():
        want = peft_model(input_ids=IDS).logits
    got = reference.logits(IDS, [ad, ad])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (want - base_logits(tiny_base)).abs().max() > 1e-2       # the comparison is not vacuous


def test_mixed_batch_rows_are_independent(tiny_base, peft_factory, reference, tmp_path):
    """One adapter (or none) per row: each row equals that adapter run alone."""
    a = load_served(convert_peft(peft_factory("a")[0], tmp_path / "sa", tiny_base))
    d = load_served(convert_peft(peft_factory("d", seed=1, use_dora=True)[0], tmp_path / "sd", tiny_base))
    ids = torch.cat([IDS, IDS[:1]])
    mixed = reference.logits(ids, [a, None, d])
    torch.testing.assert_close(mixed[0], reference.logits(IDS[:1], [a])[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mixed[1], base_logits(tiny_base)[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mixed[2], reference.logits(IDS[:1], [d])[0], rtol=1e-6, atol=1e-6)


def test_converted_lora_loads_unchanged_in_peft(tiny_base, peft_factory, tmp_path):
    """The served LoRA part is a PEFT adapter: PeftModel.from_pretrained gives the original outputs."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    src, peft_model = peft_factory("rs", use_rslora=True, lora_alpha=5, rank_pattern={"layers.0.self_attn.q_proj": 2})
    out = convert_peft(src, tmp_path / "served", tiny_base)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32), out).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, peft_model(input_ids=IDS).logits, rtol=1e-5, atol=1e-5)


def test_plain_peft_folder_is_served_as_lora(tiny_base, peft_factory, reference):
    """load_served accepts an unconverted PEFT LoRA folder (kind lora, its own scale folded into B')."""
    src, peft_model = peft_factory("plain", use_rslora=True, lora_alpha=7, rank_pattern={"layers.1.mlp.down_proj": 2})
    ad = load_served(src, base_config=reference.model.config)
    assert ad.kind == "lora" and not ad.dynamic
    with torch.no_grad():
        torch.testing.assert_close(reference.logits(IDS, [ad, ad]), peft_model(input_ids=IDS).logits, rtol=1e-5, atol=1e-5)


def test_lora_bias_refused(tiny_base, peft_factory, tmp_path):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src, _ = peft_factory("lb", lora_bias=True)
    with pytest.raises(AdapterError, match=r"adapter_config\.json: lora_bias is true"):
        convert_peft(src, tmp_path / "out", tiny_base)
    assert not (tmp_path / "out").exists()
    with pytest.raises(AdapterError, match="lora_bias"):
        load_served(src)


def test_dora_folder_unconverted_is_refused(peft_factory):
    src, _ = peft_factory("dora", use_dora=True)
    with pytest.raises(AdapterError, match="convert-peft"):
        load_served(src)
