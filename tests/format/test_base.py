"""format.base.config_json: the config's own JSON, remembered per config object only while its attributes (nested
ones too) are unchanged."""
from __future__ import annotations

import json

from hylorada.format.base import base_linear_shapes, config_json


def test_config_json_is_the_configs_own_and_follows_changes(base_cfg):
    assert config_json(base_cfg) == base_cfg.to_json_string(use_diff=False)
    assert config_json(base_cfg) is config_json(base_cfg)                 # remembered
    before = base_linear_shapes(base_cfg)
    base_cfg.intermediate_size += 32                                       # a changed attribute
    assert json.loads(config_json(base_cfg))["intermediate_size"] == base_cfg.intermediate_size
    assert base_linear_shapes(base_cfg) != before
    config_json(base_cfg)
    base_cfg.rope_parameters["rope_theta"] = 12345.0                       # changed inside a nested value
    assert json.loads(config_json(base_cfg))["rope_parameters"]["rope_theta"] == 12345.0


def test_equal_configs_apart_are_each_their_own(base_cfg, tiny_base):
    from transformers import AutoConfig

    from hylorada.format import base
    base._JSON.clear()                   # room for both: a full cache (8, filled by earlier tests) starts afresh
    other = AutoConfig.from_pretrained(tiny_base)
    first, second = config_json(base_cfg), config_json(other)              # both remembered, equal
    assert first == second
    other.hidden_size *= 2                                                 # only the changed one serializes again
    assert json.loads(config_json(other))["hidden_size"] == 2 * json.loads(first)["hidden_size"]
    assert config_json(base_cfg) is first


def test_a_changed_type_is_a_change(base_cfg):
    before = config_json(base_cfg)
    base_cfg.rms_norm_eps = float(base_cfg.rms_norm_eps)
    base_cfg.tie_word_embeddings = bool(base_cfg.tie_word_embeddings)
    assert config_json(base_cfg) is before                                 # same values, same types: remembered
    theta = base_cfg.rope_parameters["rope_theta"]
    base_cfg.rope_parameters["rope_theta"] = int(theta) if isinstance(theta, float) else float(theta)
    assert config_json(base_cfg) == base_cfg.to_json_string(use_diff=False) != before   # equal in Python only


def test_same_tells_types_apart():
    from hylorada.format.base import same
    assert same({"a": [1, (2.0, "x")]}, {"a": [1, (2.0, "x")]})
    assert not same(1, 1.0) and not same(True, 1) and not same([1], (1,)) and not same({"a": 1}, {"b": 1})
