"""state.EngineState: one per engine, both halves (LoRA: HyState, attention: AttnState) written together when an
adapter enters a slot and planned together, once per step, when the forward starts. No engine."""
from __future__ import annotations

import torch

from hylorada_patches.attn_state import AttnState, ModeSpec
from hylorada_patches.state import EngineState, HyState

SINK = ModeSpec("sink", 2, 8)


def engine_state(attn: bool = True) -> EngineState:
    lora = HyState(3)
    lora.add_rows(1)
    return EngineState(lora, AttnState(3, SINK) if attn else None)


def test_one_begin_plans_both_halves_and_one_end_clears_them():
    st = engine_state()
    st.set_requests([7, 0], [10, 12], [None, 7, None])           # request 0 on lora id 7 (slot 1), request 1 base
    assert st.attn.rows(0) == []                                   # nothing planned before the forward starts
    st.begin_step(torch.arange(5), torch.tensor([1, 1, 1, -1, -1]))
    assert st.lora.present == {1} and st.attn.req_slots.tolist() == [1, 3] and st.attn.rows(0) == [0, 1]
    st.end_step()
    assert st.lora.groups == [] and st.lora.P is None and st.attn.rows(0) == []


def test_a_forward_without_requests_plans_no_attention():
    """vLLM's dummy / profile runs call the model without set_active_loras: no variant plan, not a stale one."""
    st = engine_state()
    st.set_requests([7], [10], [7, None, None])
    st.begin_step(torch.arange(2), torch.tensor([0, 0]))
    st.end_step()
    st.begin_step(torch.arange(2), torch.tensor([0, 0]))          # the requests were consumed by the last step
    assert st.attn.rows(0) == [] and st.lora.present == {0}


def test_set_slot_writes_both_halves():
    st = engine_state()
    st.attn.specs[2] = ModeSpec("s2")
    st.lora.landmarks[2] = {0: ()}
    st.set_slot(2, None, rank=4)                                   # a plain LoRA: identity tables, default mode
    assert st.lora.ranks[2] == 4 and st.lora.landmarks[2] == {} and st.attn.specs[2] == SINK


def test_without_an_attention_half():
    st = engine_state(attn=False)
    st.set_requests([1], [3], [1, None, None])
    st.set_slot(0, None, rank=8)
    st.begin_step(torch.arange(3), torch.tensor([0, -1, 0]))
    assert st.lora.present == {0}
    st.end_step()
