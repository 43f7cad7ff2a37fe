"""ServedMeta and the bounded readers: every field of hylorada.json / adapter_config.json typed and range-checked,
one AdapterError naming every bad field, and no adapter content that can make validation crash, hang or
accept values the served math cannot compute (issue 'No request and no adapter folder can take the server down')."""
import json
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hylorada.format.base import base_weight_norms
from hylorada.format.layout import AdapterError
from hylorada.format.load import load_served, read_json
from hylorada.format.meta import Attention, Buckets, ServedMeta
from hylorada.format.peft import peft_scaling
from tests.helpers import make_peft

GOOD = {"format_version": 1, "kind": "hylorada", "position_bias": {"num_buckets": 64, "max_position": 32768},
        "attention": {"mode": "sink", "sink_tokens": 4, "window": 64, "s2_group_size_ratio": 0.25}}
B0 = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


def refused(d: dict, *reasons: str) -> str:
    with pytest.raises(AdapterError) as e:
        ServedMeta.parse(d, "x/hylorada.json")
    msg = str(e.value)
    assert msg.startswith("x/hylorada.json: "), msg
    for r in reasons:
        assert r in msg, msg
    return msg


def test_round_trip_and_defaults():
    m = ServedMeta.parse(GOOD)
    assert m.position_bias == Buckets(64, 32768) and m.attention == Attention("sink", 4, 64, 0.25)
    assert m.daa is None and m.landmarks is None and m.rope_scaling is None and m.base is None
    assert ServedMeta.parse(m.to_json()) == m
    assert ServedMeta.parse({"format_version": 1, "kind": "lora"}).attention.mode == "full"
    assert m.dynamic_parts == ["position_bias", "attention=sink"]


@pytest.mark.parametrize("pb, reason", [
    ({"num_buckets": 64, "max_position": 0}, "position_bias.max_position"),       # was: math domain error in the worker
    ({"num_buckets": 1, "max_position": 4096}, "position_bias.num_buckets"),      # was: ZeroDivisionError in the worker
    ({"num_buckets": 63, "max_position": 4096}, "even integer"),
    ({"num_buckets": 64, "max_position": 64}, "above num_buckets"),
    ({"num_buckets": True, "max_position": 4096}, "position_bias.num_buckets"),
    ({"num_buckets": "64", "max_position": 4096}, "position_bias.num_buckets"),
    ({"num_buckets": 258, "max_position": 1 << 20}, "[4, 256]"),      # wider than the engine's fixed bias table
])
def test_position_bias_values_the_served_math_cannot_compute_are_refused(pb, reason):
    refused(GOOD | {"position_bias": pb}, reason)


def test_every_bad_field_is_named_in_one_error():
    msg = refused({"format_version": 1, "kind": "bogus", "base": "garbage", "attention": ["full"],
                   "daa": {"num_buckets": 0}, "landmarks": {"num_landmarks": -1}, "has_scale": "yes", "extra": 1},
                  "kind must be one of", "base must be an object", "attention must be an object",
                  "daa.num_buckets", "landmarks.num_landmarks", "has_scale", "unknown fields ['extra']")
    assert msg.count(";") >= 6


@pytest.mark.parametrize("fv", [True, 1.0, "1", 2, None])
def test_format_version_must_be_the_integer_1(fv):
    refused(GOOD | {"format_version": fv}, "format_version")


@pytest.mark.parametrize("att, reason", [
    ({"mode": "sink", "sink_tokens": 0}, "needs sink_tokens >= 1"),
    ({"mode": "s2", "s2_group_size_ratio": 0}, "s2_group_size_ratio"),
    ({"mode": "full", "window": 0}, "attention.window"),
    ({"mode": "strange"}, "attention.mode"),
    ({"mode": "full", "bogus": 1}, "unknown fields"),
])
def test_attention_fields(att, reason):
    refused(GOOD | {"attention": att}, reason)


def test_rope_is_normalised_once_and_checked():
    assert ServedMeta.parse(GOOD | {"rope_scaling": {"rope_type": "default"}}).rope_scaling is None
    lin = {"rope_type": "linear", "factor": 4, "original_max_position_embeddings": 4096}
    assert ServedMeta.parse(GOOD | {"rope_scaling": lin}).rope_scaling == {**lin, "factor": 4.0}
    refused(GOOD | {"rope_scaling": {"rope_type": "bogus", "factor": 2.0}}, "rope_scaling.rope_type")
    refused(GOOD | {"rope_scaling": {"rope_type": "linear", "factor": float("nan")}}, "rope_scaling.factor")


def test_deeply_nested_json_is_refused_not_a_crash(tmp_path):
    f = tmp_path / "hylorada.json"
    f.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(AdapterError, match="nested too deeply"):
        read_json(f)
    f.write_text(" " * ((1 << 20) + 1))
    with pytest.raises(AdapterError, match="larger than"):
        read_json(f)


# --- adapter folders ----------------------------------------------------------------------------------------

def _edit_tensors(path: Path, fn) -> None:
    t = load_file(str(path))
    fn(t)
    save_file(t, str(path))


def test_finite_but_absurd_lora_is_refused_absolutely_and_relative_to_the_base(served, tiny_base):
    load_served(served, base_norms=base_weight_norms(str(tiny_base)))                       # the good one passes both ways
    w = served / "adapter_model.safetensors"
    _edit_tensors(w, lambda t: t.__setitem__(B0, t[B0] * 1e30))
    assert torch.isfinite(load_file(str(w))[B0]).all()
    with pytest.raises(AdapterError, match=r"above 10000 \(finite but absurd\)"):
        load_served(served)
    _edit_tensors(w, lambda t: t.__setitem__(B0, t[B0] / 1e30 * 5e3))                    # small entries, huge delta
    with pytest.raises(AdapterError, match=r"x the base weight's norm") as e:
        load_served(served, base_norms=base_weight_norms(str(tiny_base)))
    assert e.value.tensor == B0


def test_absurd_scale_vector_is_refused(served):
    _edit_tensors(served / "hylorada_dynamic.safetensors",
                  lambda t: t.__setitem__("layers.0.self_attn.q_proj.c", t["layers.0.self_attn.q_proj.c"] * 1e30))
    with pytest.raises(AdapterError, match="above the bound 1000 for c"):
        load_served(served)


def test_integer_weights_and_huge_headers_are_refused_from_the_header(served):
    w = served / "adapter_model.safetensors"
    _edit_tensors(w, lambda t: t.__setitem__(B0, t[B0].to(torch.int32)))
    with pytest.raises(AdapterError, match="must be floating point") as e:
        load_served(served)
    assert e.value.tensor == B0
    header = json.dumps({f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(200_000)}).encode()
    w.write_bytes(struct.pack("<Q", len(header)) + header)
    t0 = time.perf_counter()
    with pytest.raises(AdapterError, match="safetensors header of"):
        load_served(served)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("field, value, reason", [
    ("r", "8", "r must be an integer"), ("r", 0, "r must be an integer"), ("lora_alpha", "16", "lora_alpha"),
    ("target_modules", [1], "target_modules"), ("use_rslora", "no", "use_rslora must be true or false"),
])
def test_peft_config_fields_are_typed(tiny_base, tmp_path, field, value, reason):
    make_peft(tiny_base, tmp_path / "peft")
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps(cfg | {field: value}))
    with pytest.raises(AdapterError, match=reason):
        load_served(tmp_path / "peft")


def test_a_backtracking_alpha_pattern_cannot_freeze_the_reader():
    """Python's re took > 1 s (and holds the GIL) for this key on a 22-character module path, and minutes on
    longer ones; matching is bounded in time and PEFT's resolution of ordinary keys is unchanged."""
    cfg = {"lora_alpha": 8, "use_rslora": False, "alpha_pattern": {r"([\w.]|[\w.])*X": 2, "q_proj": 32}}
    t0 = time.perf_counter()
    try:
        s = peft_scaling(cfg, 0, "self_attn.q_proj", 4)
    except AdapterError as e:
        assert "took over" in str(e)
    else:
        assert s == 32 / 4                       # the bogus key does not match; PEFT's next key does
    assert time.perf_counter() - t0 < 1.0
    assert peft_scaling(cfg, 0, "mlp.down_proj", 4) == 8 / 4
    with pytest.raises(AdapterError, match="not a valid pattern"):
        peft_scaling({"lora_alpha": 8, "alpha_pattern": {"(": 2}}, 0, "mlp.down_proj", 4)
