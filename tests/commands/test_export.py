"""export: a native checkpoint's served form, run by the served-form reference, equals the training
model's logits (float32, 1e-5) — per position, with left padding, beside other rows."""
import json

import pytest
import torch

from hylorada import HyLoRADAConfig, HyLoRADAModel
from hylorada.commands.export import export
from hylorada.format.layout import AdapterError
from hylorada.format.load import load_served
from tests.helpers import IDS, base_logits
from tests.helpers import randomize_adapter

CASES = {
    "default": dict(),                                                    # position bias on, all projections
    "no_position_bias": dict(position_bias_enabled=False),
    "classic_scale_subset": dict(use_rslora=False, lora_rank=2, lora_alpha=5.0, target_modules=("k_proj", "up_proj")),
    "big_positions": dict(num_position_buckets=16, bucket_max_position=256),
}


def trained(tiny_base, seed=0, **kw) -> HyLoRADAModel:
    model = HyLoRADAModel.from_pretrained(tiny_base, HyLoRADAConfig(**kw)).eval()
    randomize_adapter(model, seed=seed)
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_equals_training_model(tiny_base, reference, tmp_path, case):
    model = trained(tiny_base, **CASES[case])
    model.save(tmp_path / "ckpt")
    out = export(tmp_path / "ckpt", tmp_path / "served", tiny_base)
    ad = load_served(out, base_config=reference.model.config)
    assert ad.kind == "hylorada" and ad.meta.has_scale
    assert (ad.position_bias is not None) == model.config.position_bias_enabled
    ids = torch.randint(3, 500, (2, 300), generator=torch.Generator().manual_seed(1)) if case == "big_positions" else IDS
    with torch.no_grad():
        want = model(input_ids=ids).logits
    torch.testing.assert_close(reference.logits(ids, [ad, ad]), want, rtol=1e-5, atol=1e-5)
    assert (want - base_logits(tiny_base, ids)).abs().max() > 1e-2
    if ad.position_bias is not None:   # p(pos) matters: dropping it moves the logits past the tolerance
        no_p = type(ad)(path=ad.path, meta=ad.meta.replace(position_bias=None), peft_config=ad.peft_config, lora=ad.lora,
                        dynamic={k: v for k, v in ad.dynamic.items() if k.endswith(".c")})
        assert (reference.logits(ids, [no_p, no_p]) - want).abs().max() > 1e-3


def test_left_padding_and_mixed_rows(tiny_base, reference, tmp_path):
    """Row 0 left-padded (positions restart at its first real token), row 1 has no adapter."""
    model = trained(tiny_base, seed=2)
    model.save(tmp_path / "ckpt")
    ad = load_served(export(tmp_path / "ckpt", tmp_path / "served", tiny_base))
    mask = torch.ones_like(IDS)
    mask[0, :5] = 0
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        want = model(input_ids=IDS, attention_mask=mask, position_ids=pos).logits
    got = reference.logits(IDS, [ad, None], attention_mask=mask)
    torch.testing.assert_close(got[0, 5:], want[0, 5:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], base_logits(tiny_base)[1], rtol=1e-5, atol=1e-5)


def test_exported_lora_part_loads_in_peft(tiny_base, tmp_path):
    """adapter_config.json + adapter_model.safetensors is a PEFT LoRA; in PEFT it gives W x + B' A x
    (the LoRA-only outputs: c == 1 and p == 1)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    model = trained(tiny_base, seed=4)
    model.save(tmp_path / "ckpt")
    out = export(tmp_path / "ckpt", tmp_path / "served", tiny_base)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["lora_alpha"] == cfg["r"] and cfg["use_rslora"] is False and cfg["bias"] == "none"
    ad = load_served(out)
    lora_only = type(ad)(path=ad.path, meta=ad.meta.replace(position_bias=None, has_scale=False),
                         peft_config=ad.peft_config, lora=ad.lora, dynamic={})
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32), out).eval()
    from tests.helpers import reference_for
    with torch.no_grad():
        torch.testing.assert_close(peft(input_ids=IDS).logits, reference_for(tiny_base).logits(IDS, [lora_only] * 2),
                                   rtol=1e-5, atol=1e-5)


CHANGED = [3, 17, 200, 511]                   # the token ids whose embedding rows "training" moved


def with_trained_embeddings(tiny_base, **kw) -> HyLoRADAModel:
    """A HyLoRADA model whose input embedding rows CHANGED differ from the base's (and norms, when asked)."""
    model = trained(tiny_base, seed=3, train_embeddings=True, **kw)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        table = model.base.get_input_embeddings().weight
        table[CHANGED] += 0.3 * torch.randn(len(CHANGED), table.shape[1], generator=g)
        for n, p in model.adapter_state_dict().items():
            if "norm" in n:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))
    return model


def test_trained_embeddings_export_as_the_changed_rows_and_equal_the_training_model(tiny_base, reference, tmp_path):
    """train_embeddings trains the input embeddings only (LongLoRA's "embed"); export keeps just the rows that differ
    from the base's, and the served form (reference) equals the training model, beside a base row."""
    model = with_trained_embeddings(tiny_base, train_norms=True)
    state = model.adapter_state_dict()
    assert "base.model.embed_tokens.weight" in state or any(k.endswith("embed_tokens.weight") for k in state)
    assert not any("lm_head" in k for k in state), "the output projection stays frozen on an untied base"
    model.save(tmp_path / "ckpt")
    ad = load_served(export(tmp_path / "ckpt", tmp_path / "served", tiny_base), base_config=reference.model.config)
    ids, rows = ad.embedding_rows
    assert ids.tolist() == CHANGED and ids.dtype == torch.int64 and list(rows.shape) == [len(CHANGED), 128]
    assert ad.meta.embeddings and ad.meta.dynamic_parts == ["position_bias", "norms", "embeddings"]
    tokens = IDS.clone()
    tokens[:, ::7] = torch.tensor(CHANGED).repeat(IDS.shape[1])[: tokens[:, ::7].shape[1]]
    with torch.no_grad():
        want = model(input_ids=tokens).logits
    got = reference.logits(tokens, [ad, None])
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], base_logits(tiny_base, tokens)[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reference.logits(tokens[:1], [ad])[0], got[0], rtol=1e-6, atol=1e-6)   # alone too


def tied_copy(tiny_base, out):
    """The tiny base with tie_word_embeddings (SmolLM2's layout: lm_head is embed_tokens), and its tokenizer."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(tiny_base)
    cfg.tie_word_embeddings = True
    model = AutoModelForCausalLM.from_pretrained(tiny_base, config=cfg)
    model.lm_head.weight = model.get_input_embeddings().weight      # the checkpoint's own lm_head would stay apart
    model.save_pretrained(out)
    for f in tiny_base.iterdir():
        if f.name.startswith("tokenizer"):
            shutil.copy2(f, out / f.name)
    again = AutoModelForCausalLM.from_pretrained(out)
    assert again.lm_head.weight.data_ptr() == again.get_input_embeddings().weight.data_ptr()
    return out


def test_tied_embeddings_and_a_trained_output_projection_are_refused_with_a_pointer_to_merge(tiny_base, tmp_path):
    """On a tied base (SmolLM2) trained embeddings move the output projection too: refused, pointing at merge; so is
    an older checkpoint's trained lm_head.weight on an untied one. Nothing is published either way."""
    tied = tied_copy(tiny_base, tmp_path / "tied")
    model = HyLoRADAModel.from_pretrained(tied, HyLoRADAConfig(train_norms=True, train_embeddings=True))
    model.save(tmp_path / "ckpt")
    with pytest.raises(AdapterError, match=r"tensor 'model.embed_tokens.weight': .*ties them to its output "
                       r"projection.*hylorada merge"):
        export(tmp_path / "ckpt", tmp_path / "served", tied)
    from safetensors.torch import load_file, save_file
    model = with_trained_embeddings(tiny_base)
    model.save(tmp_path / "old")
    state = load_file(tmp_path / "old" / "hylorada_state.safetensors")
    state["lm_head.weight"] = torch.randn(512, 128)
    save_file(state, tmp_path / "old" / "hylorada_state.safetensors")
    with pytest.raises(AdapterError, match=r"tensor 'lm_head.weight': .*trained output projection.*hylorada merge"):
        export(tmp_path / "old", tmp_path / "served", tiny_base)
    assert not (tmp_path / "served").exists() and not list(tmp_path.glob(".served*"))


def test_fresh_adapter_is_the_base_bit_for_bit_and_tensors_round_trip(tiny_base, reference, tmp_path):
    """A fresh export (B = 0, c == 1, p == 1 exactly) reproduces the base exactly; the stored tensors
    are exactly fold_to_served's (A unchanged, B' = s*B, c), so export -> load is bit-exact."""
    from safetensors.torch import load_file
    from hylorada import functional as F
    model = trained(tiny_base, seed=0)
    fresh = HyLoRADAModel.from_pretrained(tiny_base, HyLoRADAConfig()).eval()
    fresh.save(tmp_path / "fresh")
    ad0 = load_served(export(tmp_path / "fresh", tmp_path / "s0", tiny_base))
    assert torch.equal(reference.logits(IDS, [ad0, None])[0], reference.logits(IDS, [None, None])[0])
    model.save(tmp_path / "ckpt")
    ad = load_served(export(tmp_path / "ckpt", tmp_path / "s1", tiny_base))
    state = load_file(str(tmp_path / "ckpt" / "hylorada_state.safetensors"))
    W = load_file(str(tiny_base / "model.safetensors"))["model.layers.1.mlp.gate_proj.weight"]
    h = {k.rsplit(".", 1)[-1]: v for k, v in state.items() if k.startswith("model.layers.1.mlp.gate_proj.hylorada.")}
    A, Bf, c = F.fold_to_served(W, h["lora_A"], h["lora_B"], model.config.scaling, h["magnitude"], h["magnitude_init"],
                                h["magnitude_gate"], h["residual_weight"])
    got_A, got_B = ad.layer_lora(1, "gate_proj")
    assert torch.equal(got_A, A) and torch.equal(got_B, Bf) and torch.equal(ad.c(1, "gate_proj"), c)
    assert torch.equal(ad.w_pos(1, "gate_proj"), h["position_scale"]) and torch.equal(ad.position_bias, state["position_bias.bias"])
