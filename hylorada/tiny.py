"""Small Llama-architecture models and tokenizers built locally and seeded (no model hub here).

Used by the tests, the demo and the benchmarks. Head size is 32 or more because vLLM's CPU
attention rejects 16 (DESIGN.md §6).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from hylorada.format.atomic import atomic_dir

WORDS = ("the a an one two three four five six seven eight nine ten red blue green cat dog bird fish "
         "runs jumps sits sees likes eats big small old new fast slow river hill tree stone house "
         "road light dark day night sun moon star rain snow wind fire water key door book pass code "
         "is was and or but if then so of to in on at by with from for as it this that here there "
         "remember number secret the passkey hello world yes no what where when why how who").split()


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny Llama. head_dim = hidden_size // num_attention_heads (>= 32 for vLLM CPU)."""
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2          # grouped-query attention
    vocab_size: int = 512
    max_position_embeddings: int = 4096
    initializer_range: float = 0.08       # peaky logits: greedy argmax is far from ties
    seed: int = 0


PRESETS = {
    "tiny": TinySpec(),
    # the 26M-parameter shape the serving anchors in the benchmark issue were measured on
    "small": TinySpec(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=4, vocab_size=2048, max_position_embeddings=4096, initializer_range=0.04),
}


def corpus(n_lines: int = 2000, seed: int = 0) -> list[str]:
    """Deterministic filler text over a small vocabulary."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) + "." for _ in range(n_lines)]


def build_tokenizer(vocab_size: int, seed: int = 0):
    """A byte-level BPE trained on `corpus()`, wrapped as a transformers fast tokenizer with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(seed=seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}assistant:{% endif %}")
    return fast


def build_tiny_llama(out_dir: str | Path, spec: TinySpec | str = "tiny", dtype: str = "float32") -> Path:
    """Write a seeded random Llama + tokenizer to out_dir (a normal transformers model folder).

    Idempotent: an existing folder built from the same spec is reused.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = PRESETS[spec] if isinstance(spec, str) else spec
    out = Path(out_dir)
    stamp = out / "hylorada_tiny.json"
    want = json.dumps(spec.__dict__ | {"dtype": dtype}, sort_keys=True)
    if stamp.exists() and stamp.read_text() == want:
        return out
    tok = build_tokenizer(spec.vocab_size, spec.seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.initializer_range, tie_word_embeddings=False, rms_norm_eps=1e-5,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        dtype=dtype,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    with atomic_dir(out, replace=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "hylorada_tiny.json").write_text(want)
    return out
