"""bench.method.param_counts counts what the formulas say, on a meta-device model of the tiny shape:
LoRA r(d_in + d_out) per linear (A [r, d_in], B [d_out, r]); DoRA + d_out; the HyLoRADA blend + 2 scalars (gate, beta); the position scale
+1 scalar per linear and 64 shared buckets; DAA + H + H x 64 per layer; norms + 2 hidden per layer + the final one."""
from transformers import LlamaConfig

from bench.method.param_counts import hylorada_counts, markdown, peft_counts, table

CFG = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False)
SHAPES = {"q_proj": (128, 128), "v_proj": (128, 64), "down_proj": (256, 128)}          # (d_in, d_out)


def test_counts_follow_the_formulas():
    r, L, targets = 4, 2, list(SHAPES)
    lora = L * sum(r * (i + o) for i, o in SHAPES.values())
    d_out = L * sum(o for _, o in SHAPES.values())
    assert peft_counts(CFG, r, targets, dora=False)["total_trainable"] == lora
    assert peft_counts(CFG, r, targets, dora=True)["total_trainable"] == lora + d_out
    blend = hylorada_counts(CFG, r, targets, dict(position_bias_enabled=False))
    assert blend["total_trainable"] == lora + d_out + L * len(SHAPES) * 2 and blend["shared"] == 0
    pos = hylorada_counts(CFG, r, targets, {})
    assert pos["total_trainable"] == blend["total_trainable"] + L * len(SHAPES) + 64 and pos["shared"] == 64
    daa = hylorada_counts(CFG, r, targets, dict(daa_enabled=True))
    assert daa["total_trainable"] == pos["total_trainable"] + L * (4 + 4 * 64)
    norms = hylorada_counts(CFG, r, targets, dict(train_norms=True))
    assert norms["total_trainable"] == pos["total_trainable"] + L * 2 * 128 + 128
    assert norms["per_layer"] == (norms["total_trainable"] - 64 - 128) / L
    emb = hylorada_counts(CFG, r, targets, dict(train_embeddings=True))
    assert emb["embeddings"] == 512 * 128                       # the input table only: lm_head stays frozen


def test_the_table_and_its_markdown():
    res = table(CFG, 4, list(SHAPES))
    assert res["rows"]["rsLoRA (alpha/sqrt r)"] == res["rows"]["LoRA (alpha/r)"]
    assert res["base_parameters"] == sum(p.numel() for p in __import__("bench.method.param_counts",
                                                                        fromlist=["x"]).meta_model(CFG).parameters())
    md = markdown({"tiny": res}, 4, list(SHAPES))
    assert md.count("\n| ") == 1 + len(res["rows"]) and "| DoRA (PEFT) |" in md
