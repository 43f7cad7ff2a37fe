"""patches.loading (no engine): what the plugin refuses before vLLM loads anything or touches a slot —
each refusal an AdapterError naming file, tensor and reason."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
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


def test_a_verified_stamp_skips_the_value_checks_only(zoo, cfg, tmp_path):
    """stamped(): the publish check's stamp verifies under the engine's key against this base and rank; then
    load_hylorada gives the same side file, meta and rank as a full check without reading the LoRA values. A file
    changed after the stamp voids it, so the full check runs and refuses what it must."""
    from safetensors.torch import load_file, save_file

    from hylorada.format import stamp
    from hylorada_patches.loading import stamped
    key = bytes(range(16, 48))
    path = shutil.copytree(zoo["hy_pos"], tmp_path / "a")
    stamp.write_stamp(path, key, stamp.context(cfg, 8))
    assert stamped(str(path), cfg, 8, key) and not stamped(str(path), cfg, 8, b"") and not stamped(str(path), cfg, 4, key)
    full, fast = load_hylorada(str(path), cfg, 8), load_hylorada(str(path), cfg, 8, values_checked=True)
    assert fast.lora == {} and fast.rank == full.rank and fast.meta == full.meta and fast.size_bytes == full.size_bytes
    assert all(torch.equal(fast.dynamic[k], v) for k, v in full.dynamic.items()) and set(fast.dynamic) == set(full.dynamic)
    w = path / "adapter_model.safetensors"
    t = load_file(str(w))
    k = next(iter(t))
    t[k].view(-1)[0] = float("nan")
    save_file(t, str(w))
    assert not stamped(str(path), cfg, 8, key)
    with pytest.raises(AdapterError, match="NaN"):
        load_hylorada(str(path), cfg, 8)
