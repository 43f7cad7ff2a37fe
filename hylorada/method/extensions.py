"""Install the long-context parts of HyLoRADA on a transformers decoder.

    install_extensions(hylorada_model)  or  install_extensions(hf_model, cfg, context=None)

  - PositionalDAA as `self_attn.daa` on every layer        (cfg.daa_enabled)
  - LandmarkLoRA as `mlp.landmark` + a forward hook         (cfg.landmark_enabled)
  - AttentionSpec as `self_attn.hylorada_attention`, and the `hylorada` attention function selected
    when DAA, S² or the sink mode needs it                   (attention.py)
  - input embeddings / norms unfrozen                      (cfg.train_embeddings / cfg.train_norms)

RoPE scaling is not here: it must be in the config before the model is built (rope.py).
Call after freezing the base (this unfreezes only what the config asks for).
"""
from __future__ import annotations

from torch import nn

from hylorada.method import attention
from hylorada.config import HyLoRADAConfig
from hylorada.method.daa import PositionalDAA
from hylorada.method.landmarks import install_landmarks


def decoder_layers(hf_model: nn.Module) -> nn.ModuleList:
    """The decoder's layer list (Llama/Mistral/Qwen2: hf_model.model.layers)."""
    inner = getattr(hf_model, "model", hf_model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError("this model has no `model.layers`: HyLoRADA supports Llama-family decoders")
    return layers


def needs_hylorada_attention(cfg: HyLoRADAConfig) -> bool:
    return cfg.daa_enabled or cfg.s2_attn_enabled or cfg.attention_mode != "full"


def install_extensions(model: nn.Module, cfg: HyLoRADAConfig | None = None, context=None) -> list:
    """Attach DAA / landmarks / attention spec per cfg; returns the landmark hook handles.

    model: a HyLoRADAModel (cfg and context taken from it) or a plain transformers causal LM with cfg.
    context: the model's PositionContext (a fallback source of positions for the attention function).
    """
    if cfg is None:                                   # HyLoRADAModel._install_extensions calls install_extensions(self)
        model, cfg, context = model.base, model.config, model.position_context
    hf_model = model
    layers = decoder_layers(hf_model)
    hf_config = hf_model.config
    if cfg.daa_enabled:
        for layer in layers:
            layer.self_attn.daa = PositionalDAA(hf_config.num_attention_heads, cfg.num_position_buckets,
                                                cfg.bucket_max_position)
    handles = install_landmarks(layers, cfg.num_landmarks, hf_config.hidden_size, cfg.seed) if cfg.landmark_enabled else []
    if needs_hylorada_attention(cfg):
        attention.register()
        spec = attention.AttentionSpec.from_config(cfg)
        for layer in layers:
            layer.self_attn.hylorada_attention = spec
            layer.self_attn.__dict__["_hylorada_context"] = context    # not a submodule, not saved
        hf_model.config._attn_implementation = attention.NAME
    unfreeze_long_context(hf_model, cfg)
    return handles


def unfreeze_long_context(hf_model: nn.Module, cfg: HyLoRADAConfig) -> list[str]:
    """LongLoRA: make the input embeddings (its "embed"; on a base that ties them, the output projection is the
    same tensor) and/or every norm weight trainable. Returns their names."""
    names = []
    if cfg.train_embeddings:
        ids = {id(p) for p in hf_model.get_input_embeddings().parameters()}
        for name, p in hf_model.named_parameters():
            if id(p) in ids:
                p.requires_grad_(True)
                names.append(name)
    if cfg.train_norms:
        for name, p in hf_model.named_parameters():
            if "norm" in name.rsplit(".", 2)[-2]:            # input_layernorm, post_attention_layernorm, norm
                p.requires_grad_(True)
                names.append(name)
    return names


def extension_state_dict(hf_model: nn.Module) -> dict:
    """Every DAA / landmark tensor plus unfrozen base tensors, keyed as in the HF model (checkpoint form)."""
    out = {}
    for name, p in hf_model.named_parameters():
        if ".daa." in name or ".landmark." in name or (p.requires_grad and ".hylorada." not in name):
            out[name] = p
    return out
