"""The `hylorada` attention function against its slow twins (hylorada/attention_ref.py) and sdpa."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from hylorada import functional as F
from hylorada.method.attention import AttentionSpec, hylorada_attention_forward, register
from hylorada.reference.loops import causal_reference, s2_reference, sink_reference
from hylorada.method.daa import PositionalDAA

D = 32
TOL = dict(atol=2e-5, rtol=1e-4)


class Attn(nn.Module):
    """Stand-in for a decoder layer's attention module (what the registry calls us with)."""

    def __init__(self, heads, kv_heads, spec=None, daa=False, seed=0):
        super().__init__()
        self.num_key_value_groups, self.is_causal = heads // kv_heads, True
        self.hylorada_attention = spec
        if daa:
            self.daa = PositionalDAA(heads, 16, 256)
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                self.daa.head_scale.copy_(1 + 0.3 * torch.randn(heads, generator=g))
                self.daa.bucket_bias.copy_(torch.randn(heads, 16, generator=g))


def qkv(B, H, Hkv, Tq, Tk=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    Tk = Tk or Tq
    return (torch.randn(B, H, Tq, D, generator=g), torch.randn(B, Hkv, Tk, D, generator=g),
            torch.randn(B, Hkv, Tk, D, generator=g))


def run(mod, q, k, v, mask=None, pos=None):
    out, _ = hylorada_attention_forward(mod, q, k, v, mask, scaling=D ** -0.5, position_ids=pos)
    return out.transpose(1, 2)                                    # [B, H, Tq, d]


@pytest.mark.parametrize("T,ratio,sinks,daa", [(24, 0.25, 0, False), (24, 0.25, 3, False), (23, 0.3, 2, True),
                                               (16, 0.5, 4, True), (10, 0.25, 0, True)])
def test_s2_grouped_matches_group_loop(T, ratio, sinks, daa):
    mod = Attn(4, 2, AttentionSpec(s2_train=True, s2_ratio=ratio, sink_tokens=sinks), daa=daa).train()
    q, k, v = qkv(2, 4, 2, T)
    pos = torch.arange(T)[None].expand(2, T)
    fast = run(mod, q, k, v, pos=pos)
    slow = s2_reference(q, k, v, D ** -0.5, ratio, sinks, pos, mod.daa if daa else None)
    torch.testing.assert_close(fast, slow, **TOL)


def test_s2_with_padding_mask_matches_loop():
    """A bool sdpa-style mask (here: left padding of row 1) is respected inside every group."""
    T, ratio, sinks = 20, 0.25, 2
    mod = Attn(4, 4, AttentionSpec(s2_train=True, s2_ratio=ratio, sink_tokens=sinks)).train()
    q, k, v = qkv(2, 4, 4, T, seed=1)
    key_ok = torch.ones(2, T, dtype=torch.bool)
    key_ok[1, :3] = False
    mask = torch.ones(T, T, dtype=torch.bool).tril()[None, None] & key_ok[:, None, None, :]
    fast = run(mod, q, k, v, mask=mask)
    group = s2_reference(q, k, v, D ** -0.5, ratio, sinks)
    torch.testing.assert_close(fast[0], group[0], **TOL)
    # row 1: same rule with padded keys removed -> compare with a per-query loop of the same rule
    from hylorada.reference.loops import reference_attention
    G = F.s2_group_size(T, ratio)

    def visible(b, h, i, j):
        s = G // 2 if h >= 2 else 0
        return key_ok[b, j] and j <= i and ((i + s) // G == (j + s) // G or j < sinks)
    slow = reference_attention(q, k, v, visible, D ** -0.5)
    torch.testing.assert_close(fast[1, :, 3:], slow[1, :, 3:], **TOL)


@pytest.mark.parametrize("daa", [False, True])
def test_s2_one_group_is_full_attention(daa):
    """ratio 1 (one group covers the sequence): S² is plain causal attention, exactly sdpa's without DAA."""
    T = 16
    q, k, v = qkv(2, 4, 2, T, seed=2)
    s2 = Attn(4, 2, AttentionSpec(s2_train=True, s2_ratio=1.0, sink_tokens=2), daa=daa).train()
    full = Attn(4, 2, AttentionSpec(), daa=daa).train()
    assert torch.equal(run(s2, q, k, v), run(full, q, k, v))
    torch.testing.assert_close(run(s2, q, k, v), causal_reference(q, k, v, D ** -0.5, torch.arange(T)[None].expand(2, T),
                                                                  torch.arange(T)[None].expand(2, T), s2.daa if daa else None), **TOL)


def test_s2_only_in_training_forwards():
    spec = AttentionSpec(s2_train=True, s2_ratio=0.25)
    q, k, v = qkv(1, 4, 2, 16, seed=3)
    mod = Attn(4, 2, spec)
    plain = Attn(4, 2, None)
    assert torch.equal(run(mod.eval(), q, k, v), run(plain, q, k, v))
    assert not torch.allclose(run(mod.train(), q, k, v), run(plain, q, k, v))


def test_sink_tokens_visible_to_every_group():
    """Perturbing a sink token's value changes the output of every query (every group, both head halves);
    perturbing a non-sink token in group 0 leaves the unshifted heads' later groups untouched."""
    T, G, S = 32, 8, 2
    mod = Attn(4, 4, AttentionSpec(s2_train=True, s2_ratio=G / T, sink_tokens=S)).train()
    q, k, v = qkv(1, 4, 4, T, seed=4)
    base = run(mod, q, k, v)
    v2 = v.clone()
    v2[:, :, 1] += 10.0                                           # sink token 1
    changed = (run(mod, q, k, v2) - base).abs().amax(-1)[0]       # [H, T]
    assert bool((changed[:, 1:] > 1e-4).all())                    # every query from position 1 on, every head
    v3 = v.clone()
    v3[:, :, 5] += 10.0                                           # token 5: group 0 of the unshifted heads
    changed = (run(mod, q, k, v3) - base).abs().amax(-1)[0]
    assert float(changed[:2, G:].max()) == 0.0                    # later groups of heads 0-1 never see it
    assert float(changed[2:, 12:].max()) == 0.0                   # shifted heads: its group is [4, 12)


@pytest.mark.parametrize("daa", [False, True])
def test_sink_mode_matches_loop(daa):
    T, S, W = 20, 2, 5
    mod = Attn(4, 2, AttentionSpec(mode="sink", sink_tokens=S, window=W), daa=daa).eval()
    q, k, v = qkv(2, 4, 2, T, seed=5)
    pos = torch.arange(T)[None].expand(2, T)
    fast = run(mod, q, k, v, pos=pos)
    slow = sink_reference(q, k, v, D ** -0.5, S, W, pos, pos, mod.daa if daa else None)
    torch.testing.assert_close(fast, slow, **TOL)


def test_daa_full_attention_matches_loop_with_cache_offset():
    """Decode-style call (Tq=3 new queries over Tk=12 keys): DAA uses q_pos - k_pos with cached key positions."""
    mod = Attn(4, 2, AttentionSpec(), daa=True).eval()
    q, k, v = qkv(2, 4, 2, 3, 12, seed=6)
    q_pos = torch.arange(9, 12)[None].expand(2, 3)
    mask = (torch.arange(9, 12)[:, None] >= torch.arange(12)[None])[None, None].expand(2, 1, 3, 12)
    fast = run(mod, q, k, v, mask=mask, pos=q_pos)
    slow = causal_reference(q, k, v, D ** -0.5, q_pos, torch.arange(12)[None].expand(2, 12), mod.daa)
    torch.testing.assert_close(fast, slow, **TOL)


def test_plain_is_sdpa_bit_for_bit():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    mod = Attn(4, 2, None)
    q, k, v = qkv(2, 4, 2, 12, seed=7)
    a, _ = hylorada_attention_forward(mod, q, k, v, None, scaling=D ** -0.5)
    b, _ = sdpa_attention_forward(mod, q, k, v, None, scaling=D ** -0.5)
    assert torch.equal(a, b)


def test_registered_with_transformers():
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    register()
    assert AttentionInterface._global_mapping["hylorada"] is hylorada_attention_forward
    assert "hylorada" in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
