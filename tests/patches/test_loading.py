"""patches.loading (no engine): what the plugin refuses before vLLM loads anything or touches a slot —
each refusal an AdapterError naming file, tensor and reason."""
from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoConfig

from hylorada.format.layout import AdapterError
from hylorada_patches.loading import load_hylorada


@pytest.fixture(scope="module")
def cfg(tiny_base):
    return AutoConfig.from_pretrained(tiny_base)


def edited(src, dst, **meta):
    shutil.copytree(src, dst)
    m = json.loads((dst / "hylorada.json").read_text()) | meta
    (dst / "hylorada.json").write_text(json.dumps(m))
    return dst


def test_accepts_every_zoo_adapter_and_drops_lora_tensors(zoo, cfg):
    for name, path in zoo.items():
        ad = load_hylorada(path, cfg, max_rank=8)
        assert ad.lora == {} and ad.rank > 0, name


def test_refusals(zoo, cfg, tmp_path):
    with pytest.raises(AdapterError, match="rank 8 is above"):
        load_hylorada(zoo["hy_pos"], cfg, max_rank=4)
    with pytest.raises(AdapterError, match="rope_scaling.*meant for 8192 positions; this engine serves at most 4096"):
        load_hylorada(edited(zoo["hy_pos"], tmp_path / "rope", rope_scaling={"rope_type": "linear", "factor": 2.0,
                                                                            "original_max_position_embeddings": 4096}),
                      cfg, 8)
    longer = type(cfg).from_dict(cfg.to_dict() | {"max_position_embeddings": 8192})   # an engine sized for it
    assert load_hylorada(tmp_path / "rope", longer, 8).meta.rope_scaling["factor"] == 2.0
    small = type(cfg).from_dict(cfg.to_dict() | {"intermediate_size": 384})   # another base
    with pytest.raises(AdapterError):
        load_hylorada(zoo["hy_lm"], small, 8)
