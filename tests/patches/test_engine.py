"""The real vLLM 0.32 engine with the HyLoRADA plugin serves every adapter kind in mixed batches
exactly like the served-form reference (hylorada.reference.served, itself equal to HF/PEFT and to the
training model at 1e-5 — tests/format).

One engine (conftest): max_loras=5, max_num_batched_tokens=64, float32. Prompts of 40-95 tokens
cross many position buckets (exact below 32 / 8) and are prefilled in 64-token chunks beside other
requests' decode steps, so prefill, chunked prefill, decode and mixed steps all run.
"""
from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_same_generation, engine_outputs

pytestmark = pytest.mark.vllm

KINDS = [None, "lora", "rslora", "dora", "hy_pos", "hy_lm"]
NEW = 6
TOL = 1e-3


def prompts_for(n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 500, (40 + (11 * i) % 56,), generator=g).tolist() for i in range(n)]


def run(engine, prompts, lora_requests, max_tokens=NEW):
    from vllm import SamplingParams
    sp = SamplingParams(temperature=0, max_tokens=max_tokens, logprobs=5, ignore_eos=True)
    outs = engine.generate([{"prompt_token_ids": p} for p in prompts], sp, lora_request=lora_requests, use_tqdm=False)
    return engine_outputs(outs)


def assert_same(got, want, label):
    assert_same_generation(got, want, label, TOL)


def lora_req(name, int_id, path):
    from vllm.lora.request import LoRARequest
    return LoRARequest(name, int_id, path)


def peft_greedy(base_dir, peft_dir, prompt, new):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), peft_dir).eval()
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=new, do_sample=False, min_new_tokens=new)
    return out[0, len(prompt):].tolist()


def test_mixed_batch_every_kind(engine, zoo, served, reference, tiny_base, peft_dirs):
    """Base, LoRA, rsLoRA, converted DoRA, HyLoRADA (+position bias), HyLoRADA (+landmarks): two requests
    each, interleaved (so slot groups are non-contiguous), all in one engine batch."""
    names = KINDS * 2
    prompts = prompts_for(len(names), seed=0)
    assert max(map(len, prompts)) > 64 and sum(map(len, prompts)) > 4 * 64   # chunked prefill, mixed steps
    reqs = [None if n is None else lora_req(n, KINDS.index(n), zoo[n]) for n in names]
    got = run(engine, prompts, reqs)
    want = reference.greedy(prompts, [None if n is None else served[n] for n in names], NEW)
    for i, n in enumerate(names):
        assert_same(got[i], want[i], f"request {i} ({n or 'base'})")
    # and HF/PEFT itself (PEFT's own LoRA / rsLoRA / DoRA, from the folders the served ones came from)
    for n in ("lora", "rslora", "dora"):
        i = names.index(n)
        assert peft_greedy(tiny_base, peft_dirs[n], prompts[i], NEW) == got[i][0], f"{n} vs PEFT"
    # the dynamic parts matter: the same adapters read as plain LoRA (what stock vLLM would serve) differ
    for n in ("dora", "hy_pos", "hy_lm"):
        ad = served[n]
        plain = type(ad)(path=ad.path, meta=ad.meta.replace(position_bias=None, landmarks=None), peft_config=ad.peft_config,
                         lora=ad.lora, dynamic={})
        ids = torch.tensor([prompts[names.index(n)]])
        assert (reference.logits(ids, [plain]) - reference.logits(ids, [ad])).abs().max() > 1e-2, n


def test_more_adapters_than_slots(engine, zoo, served, reference):
    """7 adapters + base through 5 slots (and a 5-adapter CPU cache): vLLM swaps, outputs still match."""
    names = [None, "lora", "rslora", "dora", "hy_pos", "hy_lm", "extra_hy", "extra_lora", "extra_hy", "lora"]
    ids = {n: 20 + i for i, n in enumerate(dict.fromkeys(n for n in names if n))}
    prompts = prompts_for(len(names), seed=1)
    got = run(engine, prompts, [None if n is None else lora_req(f"swap-{n}", ids[n], zoo[n]) for n in names])
    want = reference.greedy(prompts, [None if n is None else served[n] for n in names], NEW)
    for i, n in enumerate(names):
        assert_same(got[i], want[i], f"request {i} ({n or 'base'})")


def test_replaced_adapter_new_id(engine, zoo, served, reference):
    """'my-adapter' v1 (id 40) is running when v2 (new id 41, new path) is published: requests started on
    v1 finish on v1 while new requests get v2, in the same steps."""
    llm = engine.llm_engine
    from vllm import SamplingParams
    sp = SamplingParams(temperature=0, max_tokens=12, logprobs=5, ignore_eos=True)
    # vLLM's LoRARequest hashes and compares by lora_name only: a set of requests holding "x"@40 and "x"@41
    # keeps one of them (KeyError in convert_mapping). A replacement needs a new id, path AND internal name.
    v1, v2 = lora_req("my-adapter@1", 40, zoo["hy_pos"]), lora_req("my-adapter@2", 41, zoo["extra_hy"])
    prompts = prompts_for(4, seed=2)
    for i in range(2):
        llm.add_request(f"old-{i}", {"prompt_token_ids": prompts[i]}, sp, lora_request=v1)
    done, started_v2 = {}, False
    for step in range(200):
        for out in llm.step():
            if out.finished:
                done[out.request_id] = (list(out.outputs[0].token_ids),
                                        [{t: lp.logprob for t, lp in s.items()} for s in out.outputs[0].logprobs])
        if step == 3 and not started_v2:           # v1 requests are decoding now
            assert not done, "v1 requests finished before the replacement"
            for i in range(2, 4):
                llm.add_request(f"new-{i}", {"prompt_token_ids": prompts[i]}, sp, lora_request=v2)
            started_v2 = True
        if not llm.has_unfinished_requests():
            break
    assert len(done) == 4
    want = reference.greedy(prompts, [served["hy_pos"]] * 2 + [served["extra_hy"]] * 2, 12)
    for i, rid in enumerate(["old-0", "old-1", "new-2", "new-3"]):
        assert_same(done[rid], want[i], rid)


def assert_path_matches(engine, path, names, seed, zoo, served, reference):
    """Switch the running engine to LoRA path `path`, serve `names` (None = base) in one batch, switch back to
    grouped; every request equals the reference."""
    assert engine.collective_rpc("hylorada_lora_path", args=(path,)) == [path]
    try:
        prompts = prompts_for(len(names), seed=seed)
        got = run(engine, prompts, [None if n is None else lora_req(n, KINDS.index(n), zoo[n]) for n in names])
    finally:
        assert engine.collective_rpc("hylorada_lora_path", args=("grouped",)) == ["grouped"]
    want = reference.greedy(prompts, [None if n is None else served[n] for n in names], NEW)
    for i, n in enumerate(names):
        assert_same(got[i], want[i], f"{path} path, request {i} ({n or 'base'})")


def test_slots_copy_nothing_on_the_grouped_path(engine, zoo, served, reference):
    """The grouped path reads each slot's weights where the engine's cache holds them (layers.hy_views): the
    layers' slot stacks are 1-slot placeholders whatever max_loras is (5 here); a switch to vLLM's own path
    builds its 5 slot copies from the views (same answers: test_vllm_lora_path_matches_too), a switch back
    drops them."""
    def stack_bytes():
        return engine.collective_rpc("hylorada_lora_residency")[0]["capacity"]["slot_bytes"]
    run(engine, prompts_for(3, seed=9), [lora_req(n, KINDS.index(n), zoo[n]) for n in ("lora", "dora", "hy_pos")])
    one = stack_bytes()
    assert engine.collective_rpc("hylorada_lora_path", args=("vllm",)) == ["vllm"]
    try:
        assert stack_bytes() == 5 * one
    finally:
        assert engine.collective_rpc("hylorada_lora_path", args=("grouped",)) == ["grouped"]
    assert stack_bytes() == one
    assert_path_matches(engine, "grouped", ["hy_pos", None, "dora"], 11, zoo, served, reference)


def test_vllm_lora_path_matches_too(engine, zoo, served, reference):
    """The same mixed batch on vLLM's own punica ops (switched on the running engine), p and the
    base-token mask applied to its rank-r buffer: still equal to the reference, base rows included."""
    assert_path_matches(engine, "vllm", KINDS, 3, zoo, served, reference)


def test_static_path_matches_too(engine, zoo, served, reference):
    """Two requests of every kind on the static path (static_path.py: fixed-capacity tables written in place, no
    Python branch on step data — the form meant for compiled / graph-captured GPU engines), switched on the running
    engine: equal to the reference, base rows included, across prefill, chunked prefill and decode steps."""
    assert_path_matches(engine, "static", KINDS * 2, 5, zoo, served, reference)


def test_prompt_logprobs_in_a_mixed_batch(engine, zoo, served, reference):
    """prompt_logprobs on three requests at once (base + adapters): on stock vLLM 0.32 the lm_head LoRA path
    indexes the prompt rows by request and the worker died (patches/logits.py); here every prompt position's
    logprob equals the reference's log-softmax at 1e-4 (float32), prompts chunked across steps."""
    from vllm import SamplingParams
    names = [None, "dora", "hy_pos"]
    prompts = prompts_for(len(names), seed=4)
    sp = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1)
    reqs = [None if n is None else lora_req(n, KINDS.index(n), zoo[n]) for n in names]
    outs = engine.generate([{"prompt_token_ids": p} for p in prompts], sp, lora_request=reqs, use_tqdm=False)
    for o, p, n in zip(outs, prompts, names):
        ad = None if n is None else served[n]
        want = torch.log_softmax(reference.logits(torch.tensor([p]), [ad])[0].double(), -1)       # [T, V]
        got = [o.prompt_logprobs[j][p[j]].logprob for j in range(1, len(p))]
        ref = [float(want[j - 1, p[j]]) for j in range(1, len(p))]
        assert max(abs(a - b) for a, b in zip(got, ref)) < 1e-4, f"{n or 'base'} prompt logprobs"
