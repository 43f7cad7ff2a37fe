"""Wraps vLLM's `LogitsProcessorWithLoRA` (vllm/lora/layers/logits_processor.py): its LoRA delta is skipped while no
slot holds lm_head weights — always, for adapters this plugin serves (the validator admits decoder linears only).

Why: vLLM 0.32 adds the lm_head LoRA with `punica.add_lora_logits`, which indexes the logits rows with
`sampler_indices` — one entry per request. With `prompt_logprobs` the rows are every prompt token of the step,
so the einsum fails (`subscript b has size 2 ... 1899`, three concurrent 1,900-token prompt_logprobs requests)
and the worker dies with the engine, base-model requests included. With no lm_head weights in any slot the
delta is exactly zero, so the plain logits path (LogitsProcessor._get_logits) gives the same logits for every
row count.

    set_lora(index, a, b)  -> slot `index` holds lm_head weights        (vLLM calls it only for adapters with lm_head)
    reset_lora(index)      -> it no longer does
    _get_logits(...)       -> base logits when no slot holds them, else vLLM's own path
"""
from __future__ import annotations

from .wrap import wrap


def install() -> None:
    from vllm.lora.layers.logits_processor import LogitsProcessorWithLoRA as L

    @wrap(L, "set_lora")
    def set_lora(orig, self, index, lora_a, lora_b):
        orig(self, index, lora_a, lora_b)
        self.__dict__.setdefault("_hylorada_live", set()).add(index)

    @wrap(L, "reset_lora")
    def reset_lora(orig, self, index):
        orig(self, index)
        self.__dict__.setdefault("_hylorada_live", set()).discard(index)

    @wrap(L, "_get_logits")
    def _get_logits(orig, self, hidden_states, lm_head, embedding_bias=None, skip_gather=False):
        if self.__dict__.get("_hylorada_live"):
            return orig(self, hidden_states, lm_head, embedding_bias, skip_gather)
        head = getattr(lm_head, "base_layer", lm_head)
        logits = type(self.base_layer)._get_logits(self.base_layer, hidden_states, head, embedding_bias, skip_gather)
        return None if logits is None else logits[..., : self.base_layer.vocab_size]
