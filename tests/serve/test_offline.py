"""The server's answers equal vLLM's offline engine (`vllm.LLM`, same base, same adapter folders, same
greedy requests): completions token for token and chat text, for the base and every demo adapter kind."""
from __future__ import annotations

import openai
import pytest

from .conftest import API_KEY, KV_BYTES
from .test_server import DEMO, N_NEW, PROMPTS

pytestmark = pytest.mark.vllm
MESSAGES = [{"role": "user", "content": "the cat sees a dog"}]


@pytest.fixture(scope="module")
def offline(server):
    from vllm import LLM
    llm = LLM(model=str(server.base), enable_lora=True, max_loras=4, max_lora_rank=16, max_cpu_loras=8,
              dtype="float32", max_model_len=512, max_num_seqs=8, kv_cache_memory_bytes=KV_BYTES, seed=0)
    yield llm
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.mark.parametrize("model", ["tiny-llama", *DEMO])
def test_server_equals_offline_engine(offline, client, server, model):
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    lora = None if model == "tiny-llama" else LoRARequest(model, 1 + DEMO.index(model), str(server.adapters / model))
    sp = SamplingParams(temperature=0, max_tokens=N_NEW, ignore_eos=True)
    want = [list(o.outputs[0].token_ids) for o in
            offline.generate([{"prompt_token_ids": p} for p in PROMPTS], sp, lora_request=lora, use_tqdm=False)]
    got = [list(client.completions.create(model=model, prompt=p, max_tokens=N_NEW, temperature=0,
                                          extra_body={"ignore_eos": True, "return_token_ids": True}
                                          ).choices[0].token_ids) for p in PROMPTS]
    assert got == want
    chat_want = offline.chat(MESSAGES, sp, lora_request=lora, use_tqdm=False)[0].outputs[0].text
    chat_got = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=N_NEW, temperature=0,
                                              extra_body={"ignore_eos": True}).choices[0].message.content
    assert chat_got == chat_want
