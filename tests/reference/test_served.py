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


def test_each_row_gets_its_adapters_rope(tiny_base, peft_factory, reference, tmp_path):
    """A batch of [plain, linear x4, YaRN x4, dynamic x2] rows on one reference equals, row by row, the model built
    with that row's scaling written into its config (what training uses: hylorada.method.rope.apply_rope_scaling);
    the scaled rows differ from the plain one (the hook reached the rotary), dynamic equals plain (served unscaled)."""
    import dataclasses
    from transformers import AutoModelForCausalLM
    from hylorada.method.rope import load_scaled_config
    ad = load_served(convert_peft(peft_factory("p", use_dora=True)[0], tmp_path / "served", tiny_base))
    lin = {"rope_type": "linear", "factor": 4.0, "original_max_position_embeddings": 16}
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    dyn = {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 16}
    rows = [ad] + [dataclasses.replace(ad, meta=ad.meta.replace(rope_scaling=r)) for r in (lin, yarn, dyn)]
    ids = torch.cat([IDS[:1]] * 4)
    got = reference.logits(ids, rows)
    for b, meta in ((1, lin), (2, yarn)):
        scaled = AutoModelForCausalLM.from_pretrained(tiny_base, config=load_scaled_config(tiny_base, meta),
                                                      dtype=torch.float32).eval()
        want = ServedReference.__new__(ServedReference)
        want.model, want.dtype, want.decoder_layers, want._rotaries = scaled, torch.float32, scaled.model.layers, {}
        plain = dataclasses.replace(ad, meta=ad.meta.replace(rope_scaling=None))
        torch.testing.assert_close(got[b], want.logits(ids[:1], [plain])[0], rtol=1e-5, atol=1e-5)
        assert (got[b] - got[0]).abs().max() > 1e-2
    torch.testing.assert_close(got[3], got[0], rtol=0, atol=0)
    torch.testing.assert_close(reference.logits(ids[:1], [ad])[0], got[0], rtol=1e-6, atol=1e-6)
