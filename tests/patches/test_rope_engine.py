"""RoPE, trained norms and trained embeddings per adapter on the real engine (issue 21, items 1-3): one engine serves
a plain HyLoRADA adapter, a linear x4 and a YaRN x4 adapter, one with trained RMSNorm weights, one with trained
embedding rows (each exported by `hylorada export` from a seeded random model of that config), one trained for real
by `hylorada train` with linear x4 RoPE, trainable norms and trainable embeddings (exported at the end of training),
and the base, side by side in mixed batches, with prompts longer than the base's own context (128 positions; the
engine holds 512).

Served == ServedReference (identical greedy tokens, top-5 logprobs within 1e-3, float32), and each adapter's answers
differ from the same adapter without its scaling / its norms / its embedding rows (the tables reached vLLM's rotary,
RMSNorm and embedding). An adapter meant for more positions than the engine holds is refused by the load-time check,
on this engine's config.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.helpers import assert_same_generation, engine_outputs
from tests.patches.conftest import load_all, make_engine, make_hylorada

pytestmark = pytest.mark.vllm
ORIG, ENGINE_LEN, NEW = 128, 512, 6
ROPE = {"plain": {}, "linear": dict(rope_scaling_type="linear", rope_scaling_factor=4.0),
        "yarn": dict(rope_scaling_type="yarn", rope_scaling_factor=4.0), "norms": dict(train_norms=True), "embeds": dict(train_embeddings=True)}
TRAINED = dict(lora_rank=8, train_norms=True, train_embeddings=True, rope_scaling_type="linear", rope_scaling_factor=4.0)
NAMES = (*ROPE, "trained")


@pytest.fixture(scope="module")
def short_base(tmp_path_factory):
    from hylorada.tiny import PRESETS, build_tiny_llama
    return build_tiny_llama(tmp_path_factory.mktemp("short") / "base",
                            dataclasses.replace(PRESETS["tiny"], max_position_embeddings=ORIG))


@pytest.fixture(scope="module")
def adapters(short_base, tmp_path_factory):
    import json

    from hylorada.config import HyLoRADAConfig
    from hylorada.tiny import corpus
    from hylorada.train.loop import train
    work = tmp_path_factory.mktemp("rope-zoo")
    out = {name: str(make_hylorada(short_base, work, name, seed=11 + i, lora_rank=8, num_position_buckets=16,
                                   bucket_max_position=ENGINE_LEN, **kw))
           for i, (name, kw) in enumerate(ROPE.items())}
    lines = corpus(240, seed=5)
    data = work / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": " ".join(lines[i:i + 24])}) for i in range(0, 240, 24)) + "\n")
    res = train(short_base, data, work / "run", HyLoRADAConfig(**TRAINED), seq_len=256, steps=6, batch_size=2, lr=3e-2,
                log_every=100, progress=False, log=lambda *_: None)
    assert res["adapter"], res["export_note"]
    out["trained"] = res["adapter"]
    return out


@pytest.fixture(scope="module")
def served(adapters, short_base):
    return load_all(adapters, short_base)


@pytest.fixture(scope="module")
def engine(short_base):
    llm = make_engine(short_base, max_model_len=ENGINE_LEN, hf_overrides={"max_position_embeddings": ENGINE_LEN})
    yield llm
    llm.llm_engine.engine_core.shutdown() if hasattr(llm.llm_engine, "engine_core") else None
    del llm


def run(engine, prompts, reqs):
    from vllm import SamplingParams
    sp = SamplingParams(temperature=0, max_tokens=NEW, logprobs=5, ignore_eos=True)
    return engine_outputs(engine.generate([{"prompt_token_ids": p} for p in prompts], sp, lora_request=reqs,
                                          use_tqdm=False))


def req(name, path):
    from vllm.lora.request import LoRARequest
    return LoRARequest(name, 1 + NAMES.index(name) if name in NAMES else 90, path)


def test_mixed_rope_settings_in_one_batch(engine, adapters, served, short_base):
    from hylorada.reference.served import ServedReference
    assert served["linear"].meta.rope_scaling == {"rope_type": "linear", "factor": 4.0,
                                                  "original_max_position_embeddings": ORIG}
    assert served["yarn"].meta.rope_scaling["rope_type"] == "yarn"
    names = [None, *NAMES] * 2
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 500, (150 + 22 * i,), generator=g).tolist() for i in range(len(names))]
    assert min(map(len, prompts)) > ORIG and max(map(len, prompts)) + NEW <= ENGINE_LEN
    got = run(engine, prompts, [None if n is None else req(n, adapters[n]) for n in names])
    ref = ServedReference(short_base)
    want = ref.greedy(prompts, [None if n is None else served[n] for n in names], NEW)
    for i, n in enumerate(names):
        assert_same_generation(got[i], want[i], f"request {i} ({n or 'base'}, {len(prompts[i])} tokens)")
    assert served["norms"].meta.norms and served["norms"].norm("norm") is not None
    assert served["trained"].meta.norms and served["trained"].meta.rope_scaling["factor"] == 4.0
    assert served["embeds"].embedding_rows[0].numel() == 171                      # every third of the 512 ids
    assert 0 < served["trained"].embedding_rows[0].numel() < 512                  # the ids the training data holds
    for n in ("linear", "yarn", "norms", "embeds", "trained"):   # not vacuous: without its part the adapter differs
        ad = served[n]
        without = {"rope": dataclasses.replace(ad, meta=ad.meta.replace(rope_scaling=None)),
                   "norms": dataclasses.replace(ad, meta=ad.meta.replace(norms=False),
                                                dynamic={k: v for k, v in ad.dynamic.items() if "norm" not in k}),
                   "embeddings": dataclasses.replace(ad, meta=ad.meta.replace(embeddings=False),
                                                     dynamic={k: v for k, v in ad.dynamic.items() if "embed" not in k})}
        ids = torch.tensor([prompts[names.index(n)]])
        parts = [p for p, on in (("rope", ad.meta.rope_scaling), ("norms", ad.meta.norms),
                                 ("embeddings", ad.meta.embeddings)) if on]
        assert parts, n
        for part in parts:
            assert (ref.logits(ids, [without[part]]) - ref.logits(ids, [ad]))[0, -1].abs().max() > 1e-2, (n, part)


def test_an_adapter_longer_than_the_engine_is_refused(engine, adapters, tmp_path):
    """The check the worker runs before vLLM loads an adapter (loading.load_hylorada), on this engine's own HF config
    (512 positions through hf_overrides). In an offline LLM a worker-side refusal ends the engine, so the server
    refuses it earlier with the same check (tests/serve/test_server_rope_shutdown.py shows that end to end)."""
    import json
    import shutil

    from hylorada.format.layout import AdapterError
    from hylorada_patches.loading import load_hylorada
    hf_config = engine.llm_engine.model_config.hf_config
    assert hf_config.max_position_embeddings == ENGINE_LEN
    too_long = tmp_path / "x8"
    shutil.copytree(adapters["linear"], too_long)
    meta = json.loads((too_long / "hylorada.json").read_text())
    meta["rope_scaling"]["factor"] = 8.0
    (too_long / "hylorada.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterError, match="meant for 1024 positions; this engine serves at most 512"):
        load_hylorada(str(too_long), hf_config, 8)
    assert load_hylorada(adapters["yarn"], hf_config, 8).meta.rope_scaling["factor"] == 4.0
