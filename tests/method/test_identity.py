"""Each long-context part is the identity at initialisation, lives under the contract's checkpoint keys,
never lets a token see the future, and round-trips through the native checkpoint."""
from __future__ import annotations

import pytest
import torch

from hylorada.config import HyLoRADAConfig
from hylorada.method.model import HyLoRADAModel

PARTS = {
    "daa": dict(daa_enabled=True),
    "landmarks": dict(landmark_enabled=True, num_landmarks=4),
    "s2_eval": dict(s2_attn_enabled=True, s2_sink_tokens=2),
    "sink_wide": dict(attention_mode="sink", s2_sink_tokens=2, sink_window=4096),
    "embeddings_norms": dict(train_embeddings=True, train_norms=True),
    "all": dict(daa_enabled=True, landmark_enabled=True, s2_attn_enabled=True, s2_sink_tokens=2,
                train_embeddings=True, train_norms=True, position_bias_enabled=False),
}


def inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 500, (2, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0                                   # left padding in row 1
    return ids, mask


@pytest.mark.parametrize("name", list(PARTS))
def test_fresh_part_reproduces_base_exactly(name, tiny_base, load_base):
    ids, mask = inputs()
    base = load_base()
    model = HyLoRADAModel.from_pretrained(tiny_base, HyLoRADAConfig(**PARTS[name])).eval()
    uses_fn = name in ("daa", "s2_eval", "sink_wide", "all")
    assert (model.base.config._attn_implementation == "hylorada") == uses_fn
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)
        a = model(input_ids=ids, attention_mask=mask).logits
        b = base(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(a[0], b[0]) and torch.equal(a[1, 4:], b[1, 4:])
    g_model = model.generate(ids[:1, :8], max_new_tokens=6, do_sample=False)
    g_base = base.generate(ids[:1, :8], max_new_tokens=6, do_sample=False)
    assert torch.equal(g_model, g_base)


def test_checkpoint_keys_and_roundtrip(tiny_base, tmp_path, randomize_daa):
    cfg = HyLoRADAConfig(daa_enabled=True, landmark_enabled=True, num_landmarks=4, train_norms=True)
    model = HyLoRADAModel.from_pretrained(tiny_base, cfg)
    state = model.adapter_state_dict()
    H, nb = model.base.config.num_attention_heads, cfg.num_position_buckets
    d, K = model.base.config.hidden_size, 4
    for i in range(model.base.config.num_hidden_layers):
        assert state[f"model.layers.{i}.self_attn.daa.head_scale"].shape == (H,)
        assert state[f"model.layers.{i}.self_attn.daa.bucket_bias"].shape == (H, nb)
        assert state[f"model.layers.{i}.mlp.landmark.keys"].shape == (K, d)
        assert state[f"model.layers.{i}.mlp.landmark.values"].shape == (K, d)
        assert state[f"model.layers.{i}.mlp.landmark.gate"].shape == ()
        assert f"model.layers.{i}.input_layernorm.weight" in state
    assert "model.norm.weight" in state and "model.embed_tokens.weight" not in state
    randomize_daa(model.base, seed=1)
    with torch.no_grad():
        for n, p in state.items():
            if n.endswith("landmark.gate") or n.endswith("norm.weight"):
                p.add_(0.5)
    ids, _ = inputs()
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    model.save(tmp_path / "ckpt")
    again = HyLoRADAModel.load(tmp_path / "ckpt", base_dir=tiny_base).eval()
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, before)


@pytest.mark.parametrize("training", [False, True])
def test_no_future_leak_with_every_part_active(tiny_base, randomize_daa, training):
    """Changing token t+1.. never changes logits at <= t: landmarks read each token's own state,
    DAA only re-weights visible keys, S² groups stay causal (training mode)."""
    cfg = HyLoRADAConfig(daa_enabled=True, landmark_enabled=True, s2_attn_enabled=True, s2_sink_tokens=2,
                         s2_group_size_ratio=0.25)
    model = HyLoRADAModel.from_pretrained(tiny_base, cfg).train(training)
    randomize_daa(model.base, seed=2)
    with torch.no_grad():
        for n, p in model.adapter_state_dict().items():
            if n.endswith("landmark.gate"):
                p.fill_(1.0)
    ids, _ = inputs()
    ids2 = ids.clone()
    ids2[:, 13:] = (ids2[:, 13:] + 7) % 500
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=ids2).logits
    assert torch.equal(a[:, :13], b[:, :13])
    assert not torch.allclose(a[:, 13:], b[:, 13:])


def test_landmark_gate_and_daa_get_gradients_at_init(tiny_base):
    cfg = HyLoRADAConfig(daa_enabled=True, landmark_enabled=True, num_landmarks=4)
    model = HyLoRADAModel.from_pretrained(tiny_base, cfg).train()
    ids, _ = inputs()
    model(input_ids=ids, labels=ids).loss.backward()
    state = model.adapter_state_dict()
    for n in ("model.layers.0.mlp.landmark.gate", "model.layers.1.self_attn.daa.head_scale",
              "model.layers.1.self_attn.daa.bucket_bias"):
        assert state[n].grad is not None and float(state[n].grad.abs().sum()) > 0, n


def test_kv_cache_decode_equals_full_forward_with_daa_and_sink_mode(tiny_base, randomize_daa):
    """Cached decoding gives the full forward's logits: key positions behind the cache are right
    for the DAA distances and for the sink + window mask."""
    cfg = HyLoRADAConfig(daa_enabled=True, attention_mode="sink", s2_sink_tokens=2, sink_window=5)
    model = HyLoRADAModel.from_pretrained(tiny_base, cfg).eval()
    assert model.base.config._attn_implementation == "hylorada"
    randomize_daa(model.base, seed=3)
    ids, _ = inputs()
    with torch.no_grad():
        full = model(input_ids=ids[:1]).logits
        out = model(input_ids=ids[:1, :10], use_cache=True)
        steps, past = [out.logits], out.past_key_values
        for t in range(10, ids.shape[1]):
            out = model(input_ids=ids[:1, t:t + 1], past_key_values=past, use_cache=True)
            steps.append(out.logits)
            past = out.past_key_values
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
