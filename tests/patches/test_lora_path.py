"""lora_path.py: one implementation per path, picked once per engine state and re-picked on a switch (the
`hylorada_lora_path` RPC); both implementations add the same delta as the kernels they wrap. No engine."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hylorada_patches import grouped_cpu, lora_path
from hylorada_patches.state import HyState


def test_pick_and_switch():
    st = HyState(2)
    assert st.path is lora_path.pick("grouped") and st.path.name == "grouped"
    st.use_path("vllm")
    assert isinstance(st.path, lora_path.PunicaPath) and st.path.name == "vllm"
    with pytest.raises(ValueError, match=r"path must be one of \('grouped', 'vllm', 'static'\)"):
        st.use_path("gather")
    assert st.path.name == "vllm"                      # a refused switch leaves the path as it was
    st.use_path("static")
    assert isinstance(st.path, lora_path.StaticPath) and st.path.name == "static"


def test_only_the_stack_reading_paths_need_slot_copies():
    assert [lora_path.needs_copies(p) for p in lora_path.PATHS] == [False, True, True]


def test_implementations_call_their_kernel(monkeypatch):
    seen = {}
    monkeypatch.setattr(grouped_cpu, "grouped_lora_", lambda *a: seen.setdefault("grouped", a))
    monkeypatch.setattr(grouped_cpu, "vllm_lora_", lambda *a: seen.setdefault("vllm", a))
    st = HyState(2)
    layer = SimpleNamespace(lora_a_stacked="A", lora_b_stacked="B", output_slices=(4,), hy_rows=(0,), hy_views="V",
                            hy_stacks="K", punica_wrapper="pw")
    st.add_rows(1)
    st.begin_step(torch.arange(3), torch.tensor([0, 1, -1]))
    out, x = torch.zeros(3, 4), torch.ones(3, 2)
    lora_path.pick("grouped").add_lora_(layer, out, x, st)
    lora_path.pick("vllm").add_lora_(layer, out, x, st)
    assert seen["grouped"] == (out, x, "V", (4,), (0,), st, "K")    # the views and batch stacks, not vLLM's stacks
    pw, o, xx, a, b, slices, p_rows = seen["vllm"]
    assert (pw, o, xx, a, b, slices) == ("pw", out, x, "A", "B", (4,)) and torch.equal(p_rows[0], st.P[0])
