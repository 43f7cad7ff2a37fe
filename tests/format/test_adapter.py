"""format.adapter.ServedAdapter.modules: remembered between calls, matched again when the LoRA names change, and a
caller's edit of the returned list changes nothing."""
from __future__ import annotations

from hylorada.format.layout import LORA_KEY
from hylorada.format.load import load_served


def slow_modules(ad):                                # the reference twin: match every name, each call
    return sorted((int(m.group(1)), m.group(2)) for k in ad.lora if (m := LORA_KEY.match(k)) and m.group(3) == "A")


def test_modules_follows_the_lora_names(served, base_cfg):
    ad = load_served(served, base_config=base_cfg)
    mods = ad.modules()
    assert mods == slow_modules(ad) and mods
    mods.clear()
    assert ad.modules() == slow_modules(ad)
    i, m = ad.modules()[0]
    for k in [k for k in ad.lora if k.startswith(f"base_model.model.model.layers.{i}.{m}.")]:
        del ad.lora[k]
    assert (i, m) not in ad.modules() and ad.modules() == slow_modules(ad)
