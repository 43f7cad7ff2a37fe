"""merge (merged == unmerged served form; dynamic parts refused with the reason) and inspect (summary, exit codes)."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from hylorada.cli import main
from hylorada.commands.convert_peft import convert_peft
from hylorada.commands.merge import merge
from hylorada.format.layout import AdapterError
from hylorada.format.load import load_served
from tests.helpers import IDS


def _merged_logits(out, ids=IDS):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(ids).logits


@pytest.mark.parametrize("kw", [dict(use_dora=True, use_rslora=True), dict(rank_pattern={"layers.1.self_attn.v_proj": 2})])
def test_merge_equals_unmerged(tiny_base, peft_factory, reference, tmp_path, kw):
    src, peft_model = peft_factory("p", **kw)
    ad = load_served(convert_peft(src, tmp_path / "served", tiny_base))
    out = merge(tmp_path / "served", tiny_base, tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(_merged_logits(out), reference.logits(IDS, [ad, ad]), rtol=1e-5, atol=1e-5)
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(out).chat_template      # a usable standalone model folder


def test_merge_static_hylorada_export(tiny_base, reference, tmp_path):
    """An exported adapter with a zero position bias (p == 1 exactly) merges; a trained one is refused."""
    from hylorada import HyLoRADAConfig, HyLoRADAModel
    from hylorada.commands.export import export
    from tests.helpers import randomize_adapter
    model = HyLoRADAModel.from_pretrained(tiny_base, HyLoRADAConfig(target_modules=("o_proj", "up_proj"))).eval()
    randomize_adapter(model, seed=7)
    model.save(tmp_path / "ckpt")
    served = export(tmp_path / "ckpt", tmp_path / "served", tiny_base)
    with pytest.raises(AdapterError, match=r"hylorada\.json: cannot merge .*position bias.*static part .* could merge.*must stay a LoRA"):
        merge(served, tiny_base, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    dyn = load_file(str(served / "hylorada_dynamic.safetensors"))
    dyn["position_bias"].zero_()
    save_file(dyn, str(served / "hylorada_dynamic.safetensors"))
    ad = load_served(served)
    out = merge(served, tiny_base, tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(_merged_logits(out), reference.logits(IDS, [ad, ad]), rtol=1e-5, atol=1e-5)


def test_inspect_valid_and_invalid(tiny_base, peft_factory, tmp_path, capsys):
    src, _ = peft_factory("p", use_dora=True, target_modules=["q_proj", "up_proj"])
    served = convert_peft(src, tmp_path / "served", tiny_base)
    assert main(["inspect", str(served), "--base", str(tiny_base)]) == 0
    out = capsys.readouterr().out
    for want in ("kind", "dora", "rank", "4", "q_proj, up_proj in 2 layers", "c scale vectors (4)", "KiB", "valid"):
        assert want in out, out
    assert main(["inspect", str(served), "--max-rank", "2"]) == 1
    assert "INVALID" in capsys.readouterr().out
    (served / "hylorada_dynamic.safetensors").unlink()
    assert main(["inspect", str(served)]) == 1
    assert "hylorada_dynamic.safetensors: missing file" in capsys.readouterr().out


def test_cli_convert_then_merge(tiny_base, peft_factory, tmp_path, capsys):
    src, _ = peft_factory("p")
    assert main(["convert-peft", str(src), str(tmp_path / "served"), "--base", str(tiny_base)]) == 0
    assert main(["convert-peft", str(src), str(tmp_path / "served"), "--base", str(tiny_base)]) == 1   # never overwrites
    assert "refusing to overwrite" in capsys.readouterr().out
    assert main(["merge", str(tmp_path / "served"), str(tmp_path / "merged"), "--base", str(tiny_base)]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_merge_native_checkpoint_with_trained_embeddings_and_norms(tiny_base, tmp_path):
    """export refuses full base tensors and points at merge; merge of the checkpoint equals the training model."""
    from hylorada import HyLoRADAConfig, HyLoRADAModel
    from tests.helpers import randomize_adapter
    cfg = HyLoRADAConfig(position_bias_enabled=False, train_embeddings=True, train_norms=True, target_modules=("v_proj",))
    model = HyLoRADAModel.from_pretrained(tiny_base, cfg).eval()
    randomize_adapter(model, seed=8)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for n, p in model.adapter_state_dict().items():
            if "norm" in n or "embed" in n or "lm_head" in n:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    model.save(tmp_path / "ckpt")
    out = merge(tmp_path / "ckpt", tiny_base, tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(_merged_logits(out), model(input_ids=IDS).logits, rtol=1e-5, atol=1e-5)


def test_served_trained_norms_export_and_merge(tiny_base, reference, tmp_path):
    """Trained norms alone (no embeddings) export into the side file; the served form merges into a model whose norms
    are the trained ones, equal to the served reference and to the training model."""
    from hylorada import HyLoRADAConfig, HyLoRADAModel
    from hylorada.commands.export import export
    from tests.helpers import randomize_adapter
    cfg = HyLoRADAConfig(position_bias_enabled=False, train_norms=True, target_modules=("v_proj",))
    model = HyLoRADAModel.from_pretrained(tiny_base, cfg).eval()
    randomize_adapter(model, seed=10)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for n, p in model.adapter_state_dict().items():
            if "norm" in n:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))
    model.save(tmp_path / "ckpt")
    served = export(tmp_path / "ckpt", tmp_path / "served", tiny_base)
    ad = load_served(served)
    assert ad.meta.norms and ad.meta.dynamic_parts == ["norms"] and ad.norm("layers.0.input_layernorm") is not None
    out = merge(served, tiny_base, tmp_path / "merged")
    with torch.no_grad():
        want = model(input_ids=IDS).logits
        torch.testing.assert_close(reference.logits(IDS, [ad, ad]), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(_merged_logits(out), want, rtol=1e-5, atol=1e-5)


def test_served_trained_embeddings_merge_into_the_rows_they_changed(tiny_base, reference, tmp_path):
    """A served adapter with trained embedding rows (and norms) merges into a model whose input embedding table is
    the base's with those rows replaced: equal to the served reference and to the training model."""
    from hylorada.commands.export import export
    from tests.commands.test_export import CHANGED, with_trained_embeddings
    model = with_trained_embeddings(tiny_base, train_norms=True, position_bias_enabled=False).eval()
    model.save(tmp_path / "ckpt")
    ad = load_served(export(tmp_path / "ckpt", tmp_path / "served", tiny_base))
    assert ad.embedding_rows[0].tolist() == CHANGED
    out = merge(tmp_path / "served", tiny_base, tmp_path / "merged")
    tokens = IDS.clone()
    tokens[:, :4] = torch.tensor(CHANGED)
    with torch.no_grad():
        want = model(input_ids=tokens).logits
        torch.testing.assert_close(reference.logits(tokens, [ad, ad]), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(_merged_logits(out, tokens), want, rtol=1e-5, atol=1e-5)
