"""patches.rope without an engine: RoPE per adapter on vLLM's own rotary module (CPU op).

Each token's rotary must equal what vLLM's rotary for its adapter's setting (the per-engine form the server used
before: one engine per setting) gives that token, base tokens must be untouched, and what cannot be served is
refused with the reason."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from hylorada.format.adapter import ServedAdapter
from hylorada.format.layout import AdapterError
from hylorada.format.meta import ServedMeta, rope_setting
from hylorada.method.rope import hf_overrides, rope_table
from hylorada_patches import rope as R

L, S, HEAD = 512, 4, 32
LIN = {"rope_type": "linear", "factor": 4.0, "original_max_position_embeddings": 128}
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}
DYN = {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 128}


def ad(name, rope):
    return ServedAdapter(path=Path(f"/x/{name}"), meta=ServedMeta(kind="hylorada", rope_scaling=rope_setting(rope)),
                         peft_config={}, lora={})


@pytest.fixture(scope="module")
def cfg(tiny_base):
    """The tiny base as an engine sized for L positions sees it (original length 128: the scaled adapters' own)."""
    c = AutoConfig.from_pretrained(tiny_base)
    return type(c).from_dict(c.to_dict() | {"max_position_embeddings": L})


@pytest.fixture(scope="module")
def vllm_ctx():
    from vllm.config import VllmConfig, set_current_vllm_config
    with set_current_vllm_config(VllmConfig()):
        yield


def plain_rope(cfg):
    """A fresh vLLM rotary of the engine's own (plain) setting, L rows (get_rope would hand out a shared one)."""
    from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding
    return RotaryEmbedding(HEAD, HEAD, L, cfg.rope_parameters["rope_theta"], True, torch.float32)


def vllm_rope(meta, cfg):
    """vLLM's rotary for one setting, as an engine started with that setting (on the 128-position base) builds it."""
    from vllm.model_executor.layers.rotary_embedding import get_rope
    base = type(cfg).from_dict(cfg.to_dict() | {"max_position_embeddings": 128})
    over = hf_overrides(meta, base)
    return get_rope(HEAD, max_position=over["max_position_embeddings"], is_neox_style=True,
                    rope_parameters=over["rope_parameters"], dtype=torch.float32)


def test_setting_keys():
    assert R.setting_key(None) is None and R.setting_key(DYN) is None            # both the base's table
    assert R.setting_key(LIN) == R.setting_key(dict(LIN, original_max_position_embeddings=9))
    assert R.setting_key(YARN) != R.setting_key(dict(YARN, original_max_position_embeddings=9))
    assert R.setting_key(LIN) != R.setting_key(YARN)


def test_check_rope_refuses_what_cannot_be_served(cfg):
    R.check_rope(ad("a", LIN), cfg)                                   # 128 x 4 = 512 = L
    R.check_rope(ad("b", None), cfg)
    with pytest.raises(AdapterError, match=r"meant for 1024 positions; this engine serves at most 512.*--max-model-len 1024"):
        R.check_rope(ad("c", dict(LIN, factor=8.0)), cfg)
    scaled_base = type(cfg).from_dict(cfg.to_dict() | {"rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                                              "rope_theta": 10000.0}})
    with pytest.raises(AdapterError, match="cannot be served on this base.*already uses RoPE scaling"):
        R.check_rope(ad("d", LIN), scaled_base)


def test_served_rotary_equals_vllms_per_setting_rotary(cfg, vllm_ctx):
    """Slots 0..2 hold plain, linear x4 and YaRN x4 adapters, slot 3 a dynamic one; tokens of all of them and base
    tokens in one call of the engine's (plain) rotary, wrapped: each token equals vLLM's own rotary for its setting."""
    R.install()
    engine_rope, plain = plain_rope(cfg), plain_rope(cfg)
    assert engine_rope.cos_sin_cache.shape[0] == L
    base_cache = engine_rope.cos_sin_cache.clone()
    tables = R.RopeTables([engine_rope], S, cfg)
    engine_rope.hylorada_rope = tables
    for i, meta in enumerate((None, LIN, YARN, DYN)):
        tables.set_slot(i, ad(f"s{i}", meta))
    assert tables.keys == [None, R.setting_key(LIN), R.setting_key(YARN)]       # dynamic shares the base's table
    assert tables.slot_table.tolist() == [0, 1, 2, 0, 0] and tables.bytes == 2 * L * HEAD * 4
    torch.testing.assert_close(engine_rope.cos_sin_cache[:L], base_cache, rtol=0, atol=0)
    torch.testing.assert_close(engine_rope.cos_sin_cache[L:2 * L], rope_table(LIN, cfg, L), rtol=0, atol=0)

    g = torch.Generator().manual_seed(0)
    T = 40
    positions = torch.randint(0, L, (T,), generator=g)
    slot_all = torch.tensor([S, 0, 1, 2, 3] * 8)                                 # S = a base token
    q, k = torch.randn(T, 4 * HEAD, generator=g), torch.randn(T, 2 * HEAD, generator=g)
    tables.begin_step(positions, slot_all)
    got_q, got_k = engine_rope(positions, q.clone(), k.clone())
    tables.end_step()
    per_setting = {None: plain, "lin": vllm_rope(LIN, cfg), "yarn": vllm_rope(YARN, cfg)}
    want_of = {S: None, 0: None, 1: "lin", 2: "yarn", 3: None}
    for t in range(T):
        rot = per_setting[want_of[int(slot_all[t])]]
        wq, wk = rot(positions[t:t + 1], q[t:t + 1].clone(), k[t:t + 1].clone())
        torch.testing.assert_close(got_q[t:t + 1], wq, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(got_k[t:t + 1], wk, rtol=1e-6, atol=1e-5)
    # not vacuous: the linear slot's tokens differ from plain RoPE at the same positions
    t = 2
    pq, _ = plain(positions[t:t + 1], q[t:t + 1].clone(), k[t:t + 1].clone())
    assert (pq - got_q[t:t + 1]).abs().max() > 1e-2 or int(positions[t]) == 0
    # outside a step (and for a call of another length) positions pass through unchanged
    again, _ = engine_rope(positions, q.clone(), k.clone())
    bq, _ = plain.forward_static(positions, q.clone(), k.clone(), HEAD, HEAD, base_cache, True)
    torch.testing.assert_close(again, bq, rtol=0, atol=0)


def test_register_refusals(cfg, vllm_ctx):
    rot = plain_rope(cfg)
    with pytest.raises(AdapterError, match="no plain rotary"):
        R.RopeTables([], S, cfg).register(ad("a", LIN))
    assert R.RopeTables([], S, cfg).register(ad("b", None)) == 0              # the base's table needs nothing
    tables = R.RopeTables([rot], S, cfg)
    for i in range(R.MAX_TABLES - 1):
        assert tables.register(ad(f"f{i}", dict(LIN, factor=1.0 + i / 8))) == i + 1
    assert tables.register(ad("again", dict(LIN, factor=1.0))) == 1              # an existing setting: no new table
    with pytest.raises(AdapterError, match=f"already serves {R.MAX_TABLES} distinct RoPE settings"):
        tables.register(ad("one-more", YARN))
    assert rot.cos_sin_cache.shape[0] == R.MAX_TABLES * L
    narrow = type(cfg).from_dict(cfg.to_dict() | {"head_dim": 16})              # a table of another width
    with pytest.raises(AdapterError, match="width 16 differs"):
        R.RopeTables([plain_rope(cfg)], S, narrow).register(ad("w", YARN))


def test_step_positions_only_with_a_scaled_table(cfg):
    class Rot:
        cos_sin_cache = torch.zeros(L, HEAD)
    tables = R.RopeTables([Rot()], S, cfg)
    pos = torch.arange(6)
    tables.set_slot(0, ad("p", None))
    tables.begin_step(pos, torch.tensor([0, 0, S, S, 0, 0]))
    assert tables.step_positions is None                                       # only the base's table: no work
    tables.set_slot(1, ad("l", LIN))
    tables.begin_step(pos, torch.tensor([0, 1, S, 1, 0, S]))
    assert tables.step_positions.tolist() == [0, L + 1, 2, L + 3, 4, 5]
    assert tables.positions_for(pos[:3]) is not None and tables.positions_for(pos[:3]).tolist() == [0, 1, 2]
    tables.begin_step(pos, None)                                                # a base-only step
    assert tables.step_positions is None
