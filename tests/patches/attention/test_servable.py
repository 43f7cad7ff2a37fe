"""patches.loading.check_servable — the one check the engine's loader and hylorada-serve's publish step
share — accepts DAA / sink / s2 adapters where the attention patch serves them and refuses them elsewhere.
No engine: the check is called directly, as hylorada_serve.publish does."""
import json
import shutil

import pytest
from transformers import AutoConfig

from hylorada.format.layout import AdapterError
from hylorada.format.load import load_served
from hylorada_patches import attention, loading


@pytest.mark.parametrize("name", ["daa", "sink", "sink_daa", "s2", "plain"])
def test_variants_are_servable_on_cpu(attn_zoo, tiny_base, name):
    assert attention.variants_supported()            # this machine: vLLM's CPU platform
    cfg = AutoConfig.from_pretrained(tiny_base)
    loading.check_servable(load_served(attn_zoo[name], base_config=cfg), cfg)


@pytest.mark.parametrize("name,part", [("daa", "daa"), ("sink", "attention"), ("s2", "attention")])
def test_variants_refused_where_the_attention_patch_is_absent(attn_zoo, tiny_base, monkeypatch, name, part):
    monkeypatch.setattr(attention, "variants_supported", lambda: False)
    cfg = AutoConfig.from_pretrained(tiny_base)
    with pytest.raises(AdapterError) as e:
        loading.check_servable(load_served(attn_zoo[name], base_config=cfg), cfg)
    assert e.value.tensor == part and "hylorada.json" in e.value.file


def test_malformed_attention_mode_is_refused(attn_zoo, tiny_base, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(attn_zoo["sink"], bad)
    meta = json.loads((bad / "hylorada.json").read_text())
    meta["attention"]["window"] = -3
    (bad / "hylorada.json").write_text(json.dumps(meta))
    cfg = AutoConfig.from_pretrained(tiny_base)
    try:
        served = load_served(bad, base_config=cfg)
    except AdapterError:
        return                                        # the format check already refuses it: fine
    with pytest.raises(AdapterError, match="window|attention"):
        loading.check_servable(served, cfg)
