"""patches.norms without an engine: trained RMSNorm weights per adapter on vLLM's own RMSNorm (CPU op).

A token of a slot whose adapter trained the norm equals transformers' RMSNorm with that weight (functional.rms_norm,
the reference's); tokens of the base and of adapters without trained norms are vLLM's output bit for bit, with and
without the fused residual add."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hylorada.format.adapter import ServedAdapter
from hylorada.format.layout import AdapterError
from hylorada.format.meta import ServedMeta
from hylorada.functional import rms_norm
from hylorada_patches import norms as N

D, S = 64, 3


def ad(name, norms: dict | None):
    meta = ServedMeta(kind="hylorada", norms=norms is not None)
    return ServedAdapter(path=Path(f"/x/{name}"), meta=meta, peft_config={}, lora={},
                         dynamic={f"{k}.weight": v for k, v in (norms or {}).items()})


@pytest.fixture(scope="module")
def rms():
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.layernorm import RMSNorm
    N.install()
    with set_current_vllm_config(VllmConfig()):
        m = RMSNorm(D, eps=1e-5)
        with torch.no_grad():
            m.weight.copy_(1 + 0.1 * torch.randn(D, generator=torch.Generator().manual_seed(1)))
        yield m


def test_only_the_trained_slots_tokens_change(rms):
    g = torch.Generator().manual_seed(0)
    w1 = 1 + 0.5 * torch.randn(D, generator=g)
    tables = N.NormTables({"layers.0.input_layernorm": rms}, S)
    rms.hylorada_norm = (tables, "layers.0.input_layernorm")
    tables.set_slot(0, ad("plain", None))
    assert tables.weight is None and tables.bytes == 0                  # nothing allocated without trained norms
    tables.set_slot(1, ad("trained", {"layers.0.input_layernorm": w1}))
    tables.set_slot(2, ad("other-norm", {"layers.0.post_attention_layernorm": torch.ones(D)}))
    assert tables.has.tolist() == [False, True, True, False] and tables.bytes == (S + 1) * D * 4
    slot_all = torch.tensor([S, 0, 1, 2, 1, S, 1])
    x, res = torch.randn(7, D, generator=g), torch.randn(7, D, generator=g)
    for residual in (None, res):
        want = rms(x.clone(), None if residual is None else residual.clone())       # outside a step: vLLM's own
        want_y = want if residual is None else want[0]
        pre = x if residual is None else x + residual
        tables.begin_step(slot_all)
        got = rms(x.clone(), None if residual is None else residual.clone())
        tables.end_step()
        got_y = got if residual is None else got[0]
        for t, s in enumerate(slot_all.tolist()):
            if s == 1:
                torch.testing.assert_close(got_y[t], rms_norm(pre[t], w1, 1e-5), rtol=1e-6, atol=1e-6)
                assert (got_y[t] - want_y[t]).abs().max() > 1e-2
            elif s == 2:                         # trained another norm: this one recomputed with the base's weight
                torch.testing.assert_close(got_y[t], want_y[t], rtol=1e-6, atol=1e-6)
            else:                                # base and plain-adapter tokens: untouched
                assert torch.equal(got_y[t], want_y[t]), t
        if residual is not None:
            assert torch.equal(got[1], want[1])                          # the residual stream is vLLM's
    tables.set_slot(1, None)                                            # the slot reused: back to the base weight
    assert not tables.has[1] and torch.equal(tables.weight["layers.0.input_layernorm"][1], rms.weight.detach())
    tables.begin_step(slot_all)
    assert tables.rows is not None and set(tables.slots.tolist()) == {2}
    tables.begin_step(None)
    assert tables.rows is None


def test_a_norm_the_engine_lacks_is_refused(rms):
    tables = N.NormTables({"layers.0.input_layernorm": rms}, S)
    tables.check(ad("fits", {"layers.0.input_layernorm": torch.ones(D)}))
    with pytest.raises(AdapterError, match="no RMSNorm for"):
        tables.check(ad("lacks", {"layers.7.post_attention_layernorm": torch.ones(D)}))
