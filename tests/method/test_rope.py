"""RoPE scaling written into rope_parameters before construction gives transformers' own frequencies,
and those equal the published formulas (linear PI, dynamic NTK, YaRN) written out independently here."""
from __future__ import annotations

import math

import pytest
import torch

from hylorada.config import HyLoRADAConfig
from hylorada.method.rope import apply_rope_scaling, hf_overrides, load_scaled_config, rope_scaling_meta

ORIG, FACTOR = 128, 4.0


def default_inv_freq(theta, dim):
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def expected(kind, theta, dim, seq_len):
    """(inv_freq [dim/2] float64, attention scaling) from the papers' formulas."""
    inv = default_inv_freq(theta, dim)
    if kind == "linear":                                      # position interpolation: pos / factor
        return inv / FACTOR, 1.0
    if kind == "dynamic":                                     # NTK-aware base, grown with the sequence
        L = max(seq_len, ORIG)
        base = theta * ((FACTOR * L / ORIG) - (FACTOR - 1)) ** (dim / (dim - 2))
        return default_inv_freq(base, dim), 1.0
    # YaRN: dims rotating > beta_fast times in ORIG keep their frequency, < beta_slow times are interpolated,
    # a linear ramp in between; attention scaled by 0.1 ln(factor) + 1
    def corr_dim(rot):
        return dim * math.log(ORIG / (rot * 2 * math.pi)) / (2 * math.log(theta))
    low, high = max(math.floor(corr_dim(32)), 0), min(math.ceil(corr_dim(1)), dim - 1)
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp
    return inv / FACTOR * (1 - keep) + inv * keep, 0.1 * math.log(FACTOR) + 1.0


@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn"])
def test_model_rope_matches_formula_and_transformers(kind, tiny_base, load_base):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    cfg = HyLoRADAConfig(rope_scaling_type=kind, rope_scaling_factor=FACTOR, rope_original_max_position=ORIG)
    hf_config = load_scaled_config(tiny_base, cfg)
    model = load_base(hf_config)
    rot = model.model.rotary_emb
    theta, dim = hf_config.rope_parameters["rope_theta"], hf_config.hidden_size // hf_config.num_attention_heads
    x = torch.zeros(1, dtype=torch.float32)
    seq = 4 * ORIG
    pos = torch.arange(seq)[None]
    cos, sin = rot(x, pos)                                    # what the model applies at 4x the length
    inv, att = expected(kind, theta, dim, seq)
    ang = pos[0, :, None].double() * inv[None]
    emb = torch.cat([ang, ang], -1)
    torch.testing.assert_close(cos[0].double(), emb.cos() * att, atol=2e-4, rtol=0)   # float32 angles up to ~500 rad
    torch.testing.assert_close(sin[0].double(), emb.sin() * att, atol=2e-4, rtol=0)
    own, own_att = ROPE_INIT_FUNCTIONS[kind](hf_config, None, seq_len=seq if kind == "dynamic" else None)
    torch.testing.assert_close(rot.inv_freq.double(), own.double(), atol=0, rtol=0)
    assert rot.attention_scaling == pytest.approx(own_att)
    torch.testing.assert_close(own.double(), inv, atol=1e-7, rtol=1e-5)


def test_dynamic_is_unscaled_within_original_length(tiny_base, load_base):
    cfg = HyLoRADAConfig(rope_scaling_type="dynamic", rope_scaling_factor=FACTOR, rope_original_max_position=ORIG)
    rot = load_base(load_scaled_config(tiny_base, cfg)).model.rotary_emb
    base_rot = load_base().model.rotary_emb
    pos = torch.arange(ORIG)[None]
    x = torch.zeros(1)
    assert torch.equal(rot(x, pos)[0], base_rot(x, pos)[0])


def test_meta_and_vllm_overrides(tiny_base):
    from transformers import AutoConfig
    hf = AutoConfig.from_pretrained(tiny_base)
    theta = hf.rope_parameters["rope_theta"]
    none = HyLoRADAConfig()
    assert rope_scaling_meta(none, hf) is None and apply_rope_scaling(hf, none) is None
    yarn = HyLoRADAConfig(rope_scaling_type="yarn", rope_scaling_factor=FACTOR, rope_original_max_position=ORIG)
    meta = rope_scaling_meta(yarn, hf)
    assert meta == {"rope_type": "yarn", "factor": FACTOR, "original_max_position_embeddings": ORIG}
    assert hf_overrides(meta, hf) == {"rope_parameters": {"rope_type": "yarn", "factor": FACTOR, "rope_theta": theta,
                                                          "original_max_position_embeddings": ORIG},
                                      "max_position_embeddings": int(ORIG * FACTOR)}
    dyn = rope_scaling_meta(HyLoRADAConfig(rope_scaling_type="dynamic", rope_scaling_factor=2.0), hf)
    assert dyn["original_max_position_embeddings"] == hf.max_position_embeddings        # default: the base's length
    assert hf_overrides(dyn, hf)["max_position_embeddings"] == hf.max_position_embeddings
    apply_rope_scaling(hf, meta)                                 # a meta dict (from hylorada.json) works too
    assert hf.rope_parameters["rope_type"] == "yarn" and hf.max_position_embeddings == 512
    with pytest.raises(ValueError, match="already uses RoPE scaling"):
        apply_rope_scaling(hf, HyLoRADAConfig(rope_scaling_type="linear", rope_scaling_factor=2.0))


def test_hylorada_model_builds_with_scaling(tiny_base):
    from hylorada.method.model import HyLoRADAModel
    cfg = HyLoRADAConfig(rope_scaling_type="linear", rope_scaling_factor=FACTOR, rope_original_max_position=ORIG)
    model = HyLoRADAModel.from_pretrained(tiny_base, cfg)
    assert model.base.config.rope_parameters["rope_type"] == "linear"
    base_inv = default_inv_freq(model.base.config.rope_parameters["rope_theta"], 32).float()
    torch.testing.assert_close(model.base.model.rotary_emb.inv_freq, base_inv / FACTOR)
