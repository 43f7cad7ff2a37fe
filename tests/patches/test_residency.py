"""hylorada_patches/residency.py without an engine: bytes of a vLLM-shaped LoRAModel (packed modules as lists, the
side file attached by loading.py) and the bounded load counts."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from hylorada_patches import residency


def test_lora_bytes_counts_every_tensor_packed_lists_and_the_side_file():
    plain = SimpleNamespace(lora_a=torch.zeros(4, 8), lora_b=torch.zeros(16, 4))              # 32 + 64 floats
    packed = SimpleNamespace(lora_a=[torch.zeros(4, 8), None], lora_b=[torch.zeros(8, 4, dtype=torch.bfloat16)])
    side = SimpleNamespace(size_bytes=100)
    model = SimpleNamespace(loras={"q": plain, "qkv": packed}, hylorada=side)
    assert residency.lora_bytes(model) == (32 + 64 + 32) * 4 + 32 * 2 + 100


def test_load_counts_are_bounded_and_keep_the_newest(monkeypatch):
    monkeypatch.setattr(residency, "MAX_TRACKED", 3)
    monkeypatch.setattr(residency, "_LOADS", type(residency._LOADS)())
    monkeypatch.setattr(residency, "_STAMPED", type(residency._STAMPED)())
    for uid, stamped in ((1, True), (2, False), (1, False), (3, True), (4, True), (5, False)):
        residency.count_load(uid, stamped)
    assert dict(residency._LOADS) == {3: 1, 4: 1, 5: 1}
    assert dict(residency._STAMPED) == {1: 1, 3: 1, 4: 1}     # stamped loads only, bounded alike


def test_over_budget_evicts_oldest_first_and_never_the_newest_slots():
    assert residency.over_budget([10, 10, 10, 10], budget=25, keep=1) == 2        # 40 -> 20
    assert residency.over_budget([10, 10, 10, 10], budget=5, keep=2) == 2         # the newest two stay, over budget
    assert residency.over_budget([10, 10], budget=100, keep=0) == 0
    assert residency.over_budget([10, 10], budget=0, keep=0) == 0                 # 0: no budget
