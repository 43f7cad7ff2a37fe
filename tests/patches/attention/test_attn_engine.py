"""The real vLLM 0.32 engine with the HyLoRADA plugin serves PositionalDAA, `sink` and `s2` adapters
exactly like the served-form reference (hylorada.reference.served: per-row eager attention built from
hylorada.functional), in batches where only some sequences use the variant: greedy tokens identical,
every top-5 logprob within 1e-3 (float32). Prompts of 40-95 tokens (window 16-24, 4 sinks) are
prefilled in 64-token chunks beside other requests' decode steps, then decoded past the prompt.

S² oracle: S² is a prefill pattern (groups of G = round(ratio * prompt length), with sinks); generated
tokens attend causally to everything — what HyLoRADAModel does with a KV cache. ServedReference
recomputes the whole sequence each step (S² over the grown length), so its first step is the S²
prefill itself and the later steps use reference_attn's row mask with the prompt length fixed.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from hylorada.format.meta import Attention

from tests.helpers import assert_same_generation, engine_outputs

from hylorada import functional as F
from hylorada.reference import attention as reference_attn

pytestmark = pytest.mark.vllm

NEW = 8
TOL = 1e-3
IDS = {"daa": 1, "sink": 2, "sink_daa": 3, "s2": 4, "plain": 5}


def prompts_for(n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 500, (40 + (13 * i) % 56,), generator=g).tolist() for i in range(n)]


def run(engine, zoo, prompts, names):
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest
    reqs = [None if n is None else LoRARequest(n, IDS[n], zoo[n]) for n in names]
    sp = SamplingParams(temperature=0, max_tokens=NEW, logprobs=5, ignore_eos=True)
    outs = engine.generate([{"prompt_token_ids": p} for p in prompts], sp, lora_request=reqs, use_tqdm=False)
    return engine_outputs(outs)


def assert_same(got, want, label):
    assert_same_generation(got, want, label, TOL)


@contextlib.contextmanager
def s2_prompt_len(prompt_len: int):
    """reference_attn's row mask for `s2` with G taken from the prompt and causal rows after it."""
    orig = reference_attn.row_allowed

    def row_allowed(ad, pos, allowed, num_heads):
        if ad is None or ad.meta.attention.mode != "s2":
            return orig(ad, pos, allowed, num_heads)
        att, P, idx = ad.meta.attention, prompt_len, torch.arange(pos.shape[0])
        G, qi, kj = F.s2_group_size(P, att.s2_group_size_ratio), idx[:, None], idx[None, :]
        heads = [torch.where(qi < P, F.s2_allowed(qi, kj, G, F.s2_shift(h, num_heads, G, P), att.sink_tokens),
                             kj <= qi) for h in range(num_heads)]
        return allowed & torch.stack(heads)

    reference_attn.row_allowed = row_allowed
    try:
        yield
    finally:
        reference_attn.row_allowed = orig


def expected(reference, served, prompts, names):
    out = []
    for p, n in zip(prompts, names):
        ad = None if n is None else served[n]
        with s2_prompt_len(len(p)) if n == "s2" else contextlib.nullcontext():
            out.append(reference.greedy([p], [ad], NEW)[0])
    return out


def check_batch(engine, zoo, served, reference, names, seed):
    prompts = prompts_for(len(names), seed)
    got = run(engine, zoo, prompts, names)
    want = expected(reference, served, prompts, names)
    for i, n in enumerate(names):
        assert_same(got[i], want[i], f"request {i} ({n or 'base'}, {len(prompts[i])} prompt tokens)")
    return prompts, got


def test_daa_mixed_batch(attn_engine, attn_zoo, attn_served, attn_reference):
    """DAA sequences beside the base and a plain HyLoRADA adapter; DAA really changes the output."""
    prompts, _ = check_batch(attn_engine, attn_zoo, attn_served, attn_reference, [None, "daa", "plain", "daa", None], 0)
    ad = attn_served["daa"]
    no_daa = type(ad)(path=ad.path, meta=ad.meta.replace(daa=None), peft_config=ad.peft_config, lora=ad.lora,
                      dynamic={k: v for k, v in ad.dynamic.items() if ".daa." not in k})
    ids = torch.tensor([prompts[1]])
    assert (attn_reference.logits(ids, [no_daa]) - attn_reference.logits(ids, [ad])).abs().max() > 1e-2


def test_sink_mixed_batch(attn_engine, attn_zoo, attn_served, attn_reference):
    """sink (4 + 16) and sink + DAA (4 + 24) beside full-attention sequences; sequences grow far past the
    window and keep matching; the window really changes the output."""
    names = ["sink", "plain", None, "sink_daa", "sink", "daa"]
    prompts, _ = check_batch(attn_engine, attn_zoo, attn_served, attn_reference, names, 1)
    ad = attn_served["sink"]
    full = type(ad)(path=ad.path, meta=ad.meta.replace(attention=Attention()), peft_config=ad.peft_config,
                    lora=ad.lora, dynamic=ad.dynamic)
    ids = torch.tensor([prompts[0]])
    assert (attn_reference.logits(ids, [full]) - attn_reference.logits(ids, [ad])).abs().max() > 1e-2


def test_s2_mixed_batch(attn_engine, attn_zoo, attn_served, attn_reference):
    """s2 sequences (chunked prefill: G from the whole prompt) beside others; step 0 is the unmodified
    reference's S² prefill."""
    names = ["s2", "plain", "s2", None, "sink"]
    prompts, got = check_batch(attn_engine, attn_zoo, attn_served, attn_reference, names, 2)
    for i in (0, 2):
        first = attn_reference.greedy([prompts[i]], [attn_served["s2"]], 1)[0]
        assert_same((got[i][0][:1], got[i][1][:1]), first, f"s2 prefill {i}")


def blocks_in_use(engine) -> float:
    from tests.patches.attention.conftest import NUM_BLOCKS
    usage = [m.value for m in engine.get_metrics() if m.name == "vllm:kv_cache_usage_perc"]
    return usage[0] * (NUM_BLOCKS - 1)            # the gauge excludes the null block


def stepwise(engine, zoo, prompt, name, new):
    """Run one request step by step; (token ids, top-5 logprobs, peak KV blocks held)."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest
    sp = SamplingParams(temperature=0, max_tokens=new, logprobs=5, ignore_eos=True)
    eng = engine.llm_engine
    eng.add_request(f"kv-{name}", {"prompt_token_ids": prompt}, sp, lora_request=LoRARequest(name, IDS[name], zoo[name]))
    peak, out = 0.0, None
    for _ in range(4 * new):
        if not eng.has_unfinished_requests():
            break
        for o in eng.step():
            out = o if o.finished else out
        peak = max(peak, blocks_in_use(engine))
    c = out.outputs[0]
    return list(c.token_ids), [{t: lp.logprob for t, lp in s.items()} for s in c.logprobs], peak


def test_sink_kv_cache_stays_bounded(attn_engine, attn_zoo, attn_served, attn_reference):
    """A sink sequence with a 160-token prompt (prefilled in 64-token chunks, trimmed between them) decoded to
    280 tokens (17x its window) holds at most cdiv(4, 32) + cdiv(16 - 1 + 64, 32) + 2 = 6 KV blocks (attn_kv.py)
    while a full-attention one of the same length holds all cdiv(279, 32) = 9 — and the sink sequence, reading
    a trimmed cache, still equals the reference token for token."""
    from tests.patches.attention.conftest import BLOCK, SINKS, WINDOW

    def cdiv(a, b):
        return -(-a // b)
    g = torch.Generator().manual_seed(3)
    prompt, new = torch.randint(3, 500, (160,), generator=g).tolist(), 120
    ids, logprobs, peak_sink = stepwise(attn_engine, attn_zoo, prompt, "sink", new)
    *_, peak_full = stepwise(attn_engine, attn_zoo, prompt, "plain", new)
    assert peak_full >= cdiv(len(prompt) + new - 1, BLOCK) - 0.01, peak_full
    assert peak_sink <= cdiv(SINKS, BLOCK) + cdiv(WINDOW - 1 + 64, BLOCK) + 2 + 0.01, (peak_sink, peak_full)
    assert_same((ids, logprobs), attn_reference.greedy([prompt], [attn_served["sink"]], new)[0], "long sink decode")


@pytest.mark.parametrize("name", ["s2", "sink_daa"])
def test_shared_prefix_with_prefix_caching(attn_engine, attn_zoo, attn_served, attn_reference, name):
    """Two requests of one adapter share a 96-token prefix (3 cached blocks), run one after the other with
    prefix caching on. `s2` must not reuse the first prompt's blocks (its KV depends on G(prompt length),
    attn_kv.py turns the lookup off); `sink`+DAA may (its KV depends on the prefix only). Both equal the
    reference computed for each prompt alone."""
    g = torch.Generator().manual_seed(7)
    prefix = torch.randint(3, 500, (96,), generator=g).tolist()
    prompts = [prefix + torch.randint(3, 500, (n,), generator=g).tolist() for n in (8, 60)]
    hits = []
    for p in prompts:
        got = run(attn_engine, attn_zoo, [p], [name])[0]
        assert_same(got, expected(attn_reference, attn_served, [p], [name])[0], f"{name}, {len(p)} prompt tokens")
        hits.append(sum(m.value for m in attn_engine.get_metrics() if m.name == "vllm:prefix_cache_hits"))
    assert hits[1] - hits[0] == (0 if name == "s2" else 96), hits
