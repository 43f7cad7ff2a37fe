"""The served-form reference on its own: base biases stay outside c (Qwen2 q/k/v biases vs PEFT),
greedy decoding, the export CLI, and that the base is restored after every call."""
import pytest
import torch

from hylorada.cli import main
from hylorada.commands.convert_peft import convert_peft
from hylorada.reference.served import ServedReference
from hylorada.format.load import load_served
from tests.helpers import IDS, make_peft


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
    """A tiny Qwen2 (q/k/v projections with biases, non-zero) saved as a transformers folder."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("proj.bias"):
                p.normal_(0, 0.5)
    d = tmp_path_factory.mktemp("qwen2") / "base"
    model.save_pretrained(d)
    return d


@pytest.mark.parametrize("kw", [dict(use_dora=True), dict(use_rslora=True)])
def test_qwen2_biases_stay_outside_c(tiny_qwen2, tmp_path, kw):
    peft = make_peft(tiny_qwen2, tmp_path / "peft", target_modules=["q_proj", "k_proj", "o_proj"], **kw)
    ad = load_served(convert_peft(tmp_path / "peft", tmp_path / "served", tiny_qwen2))
    with torch.no_grad():
        want = peft(input_ids=IDS).logits
    torch.testing.assert_close(ServedReference(tiny_qwen2).logits(IDS, [ad, ad]), want, rtol=1e-5, atol=1e-5)


def test_greedy_and_base_restored(tiny_base, peft_factory, reference, tmp_path):
    ad = load_served(convert_peft(peft_factory("p", use_dora=True)[0], tmp_path / "served", tiny_base))
    base_before = reference.logits(IDS[:1], [None])
    prompt = IDS[0, :8].tolist()
    (gen, steps), (gen_base, _) = reference.greedy([prompt, prompt], [ad, None], max_new_tokens=4, top_logprobs=3)
    assert len(gen) == 4 and len(steps) == 4 and all(len(s) == 3 for s in steps)
    full = reference.logits(torch.tensor([prompt + gen]), [ad])[0]
    assert gen == full[len(prompt) - 1:-1].argmax(-1).tolist()                      # each step was the argmax
    assert max(steps[0], key=steps[0].get) == gen[0]
    torch.testing.assert_close(reference.logits(IDS[:1], [None]), base_before)      # nothing left installed
    assert all(type(m).__name__ != "_ServedLinear" for m in reference.model.modules())


def test_export_cli(tiny_base, tmp_path, capsys):
    from hylorada import HyLoRADAConfig, HyLoRADAModel
    HyLoRADAModel.from_pretrained(tiny_base, HyLoRADAConfig(target_modules=("q_proj",))).save(tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "served")]) == 0       # base from the checkpoint
    assert main(["inspect", str(tmp_path / "served"), "--base", str(tiny_base)]) == 0
    assert "position bias (64 buckets" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "s2")]) == 1
    assert "missing" in capsys.readouterr().out and not (tmp_path / "s2").exists()
