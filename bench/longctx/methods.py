"""The methods compared, each a trainable model on the same base at the same LoRA budget (rank r, all seven
projections, alpha 2r, so the LoRA corner's scale alpha/r is 2 and rsLoRA's alpha/sqrt r is 2 sqrt r):

    LoRA, rsLoRA, DoRA          PEFT's own (get_peft_model), alpha/r, alpha/sqrt r, DoRA with alpha/r
    LongLoRA-style              HyLoRADA at its LoRA corner (beta = 1, magnitude frozen, alpha/r, no position bias)
                                + trainable input embeddings and norms + S^2-Attn in training (LongLoRA's recipe)
    HyLoRADA (blend)            gated DoRA magnitude blended with LoRA, rsLoRA scale, no position bias
    + position scale            ... + the 64-bucket per-token scale of the delta (the default)
    + DAA / + landmarks / + sinks   ... + PositionalDAA / + LandmarkLoRA (K = 8) / + S^2 with 4 sink tokens in training

build(name, base_dir, rank, seed, rope=None) -> (model, trainable parameters); every model is called as
model(input_ids, labels). rope=("linear", 4.0) (or dynamic / yarn) scales the base's RoPE the same way for every
method (hylorada.method.rope.apply_rope_scaling: max_position_embeddings x factor) - the context-extension setting.
base_model(base_dir, rope) -> the untrained base with the same RoPE.
"""
from __future__ import annotations

import torch

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SATURATED = 30.0            # sigmoid(30) = 1 in float32: the LoRA corner's beta
PEFT = {"LoRA": dict(), "rsLoRA": dict(use_rslora=True), "DoRA": dict(use_dora=True)}
HYLORADA = {
    "LongLoRA-style": dict(use_rslora=False, use_dora_magnitude=False, residual_weight_init=SATURATED,
                           position_bias_enabled=False, train_embeddings=True, train_norms=True, s2_attn_enabled=True),
    "HyLoRADA (blend)": dict(position_bias_enabled=False),
    "HyLoRADA + position scale": dict(),
    "HyLoRADA + DAA": dict(daa_enabled=True),
    "HyLoRADA + landmarks": dict(landmark_enabled=True, num_landmarks=8),
    "HyLoRADA + sinks": dict(s2_attn_enabled=True, s2_sink_tokens=4),
}
METHODS = (*PEFT, *HYLORADA)


def rope_fields(rope) -> dict:
    return {} if rope is None else {"rope_scaling_type": rope[0], "rope_scaling_factor": float(rope[1])}


def base_model(base_dir, rope=None):
    from transformers import AutoConfig, AutoModelForCausalLM

    from hylorada import HyLoRADAConfig
    from hylorada.method.rope import apply_rope_scaling
    hf_config = AutoConfig.from_pretrained(base_dir)
    if rope is not None:
        apply_rope_scaling(hf_config, HyLoRADAConfig(**rope_fields(rope)))
    return AutoModelForCausalLM.from_pretrained(base_dir, config=hf_config, dtype=torch.float32)


def build(name: str, base_dir, rank: int, seed: int, rope=None):
    torch.manual_seed(seed)
    if name in PEFT:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(base_model(base_dir, rope),
                               LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                          target_modules=list(PROJECTIONS), **PEFT[name]))
    elif name in HYLORADA:
        from hylorada import HyLoRADAConfig, HyLoRADAModel
        cfg = HyLoRADAConfig(lora_rank=rank, lora_alpha=2.0 * rank, seed=seed, **HYLORADA[name], **rope_fields(rope))
        model = HyLoRADAModel.from_pretrained(base_dir, cfg)
    else:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return model, [p for p in model.parameters() if p.requires_grad]
