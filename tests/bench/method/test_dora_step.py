"""bench.method.dora_step on the tiny base: HyLoRADA at the DoRA corner, started from PEFT DoRA's init, is the same
model (equal logits with the same trained-looking weights) and trains the same (per-step losses equal)."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from bench.method.dora_step import hylorada_model, peft_model, run_one


def test_the_corner_is_peft_dora(tiny_base):
    peft = peft_model(tiny_base, rank=4, alpha=8.0, dora=True)
    hyl = hylorada_model(tiny_base, rank=4, alpha=8.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if ".lora_B." in n or "lora_magnitude_vector" in n:
                key = n.replace("base_model.model.", "").split(".lora_")[0]
                q = dict(hyl.base.named_parameters())[key + (".hylorada.lora_B" if ".lora_B." in n
                                                             else ".hylorada.magnitude")]
                new = torch.randn(p.shape, generator=g) * 0.05 + (p if "magnitude" in n else 0)
                p.copy_(new)
                q.copy_(new)
    ids = torch.randint(3, 500, (2, 12), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(hyl(input_ids=ids).logits, peft(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_per_step_losses_are_equal(tiny_base):
    a = SimpleNamespace(base=str(tiny_base), rank=4, alpha=8.0, lr=1e-2, batch=2, seq=16, steps=4)
    peft, hyl = run_one("peft-dora", a), run_one("hylorada-dora", a)
    assert peft["trainable"] == hyl["trainable"]                   # A, B, m of every projection: the same parameters
    assert max(abs(x - y) for x, y in zip(peft["losses"], hyl["losses"])) < 1e-4, (peft["losses"], hyl["losses"])
    assert peft["losses"][-1] < peft["losses"][0]                  # it trains
