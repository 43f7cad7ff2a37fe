import json

import pytest

from hylorada.config import ConfigError, HyLoRADAConfig


def test_defaults_are_valid_and_rslora():
    c = HyLoRADAConfig()
    assert c.use_rslora and c.num_position_buckets == 64
    assert c.scaling == pytest.approx(16.0 / 8 ** 0.5)
    assert HyLoRADAConfig(use_rslora=False).scaling == pytest.approx(2.0)


def test_json_round_trip(tmp_path):
    c = HyLoRADAConfig(lora_rank=16, target_modules=["q_proj", "v_proj"], rope_scaling_type="yarn",
                       rope_scaling_factor=4.0, landmark_enabled=True, num_landmarks=4, s2_sink_tokens=4)
    path = tmp_path / "cfg.json"
    c.to_json(path)
    assert HyLoRADAConfig.from_json(path) == c
    assert HyLoRADAConfig.from_json(c.to_json()) == c
    assert json.loads(c.to_json())["target_modules"] == ["q_proj", "v_proj"]


def test_one_error_lists_every_invalid_field():
    with pytest.raises(ConfigError) as e:
        HyLoRADAConfig(lora_rank=0, lora_alpha=-1, lora_dropout=1.5, num_position_buckets=7,
                       rope_scaling_type="ntk", attention_mode="weird", target_modules=[])
    msg = str(e.value)
    for field in ("lora_rank", "lora_alpha", "lora_dropout", "num_position_buckets", "rope_scaling_type",
                  "attention_mode", "target_modules"):
        assert field in msg
    assert len(e.value.problems) == 7


def test_unknown_field_and_bool_types_refused():
    with pytest.raises(ConfigError, match="unknown field 'rank'"):
        HyLoRADAConfig.from_dict({"rank": 8})
    with pytest.raises(ConfigError, match="use_rslora"):
        HyLoRADAConfig(use_rslora="yes")
    with pytest.raises(ConfigError, match="lora_rank"):
        HyLoRADAConfig(lora_rank=True)


def test_later_features_validated_now():
    with pytest.raises(ConfigError, match="sink"):
        HyLoRADAConfig(attention_mode="sink", s2_sink_tokens=0)
    with pytest.raises(ConfigError, match="rope_scaling_factor != 1 needs"):
        HyLoRADAConfig(rope_scaling_factor=2.0)
    assert HyLoRADAConfig(daa_enabled=True, s2_attn_enabled=True, train_norms=True).daa_enabled
