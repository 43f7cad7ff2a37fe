"""The served adapter folder's vocabulary (DESIGN.md §3, docs/format.md): file names, tensor names, AdapterError.

    my-adapter/adapter_config.json          PEFT LoRA config, lora_alpha == r, use_rslora false (scale 1)
    my-adapter/adapter_model.safetensors    base_model.model.<module>.lora_A.weight [r, in], .lora_B.weight [out, r] = B'
    my-adapter/hylorada.json                format_version, kind, base identity, dynamic parts (meta.ServedMeta)
    my-adapter/hylorada_dynamic.safetensors c, w_pos, position_bias, daa.*, landmark.*, trained RMSNorm weights
                                            (layers.{i}.input_layernorm.weight, ...post_attention_layernorm.weight,
                                            norm.weight: full [hidden] vectors replacing the base's for its tokens),
                                            trained input-embedding rows (embed_tokens.ids [k] int64, increasing;
                                            embed_tokens.rows [k, hidden]: only the rows training changed)

Per layer the served math is y = c * (W x + p(pos) * B' A x) + b (functional.served_linear).
"""
from __future__ import annotations

import re
from pathlib import Path

FORMAT_VERSION = 1
KINDS = ("hylorada", "lora", "dora")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
META = "hylorada.json"
DYNAMIC = "hylorada_dynamic.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
PEFT_PREFIX = "base_model.model.model."
LORA_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.([\w.]+)\.lora_([AB])\.weight$")
DYN_KEY = re.compile(r"^layers\.(\d+)\.(?:([\w.]+_proj)\.(c|w_pos)|daa\.(head_scale|bucket_bias)|landmark\.(keys|values|gate))$")
NORM_KEY = re.compile(r"^(?:layers\.\d+\.(?:input_layernorm|post_attention_layernorm)\.weight|norm\.weight)$")
EMBED_IDS, EMBED_ROWS = "embed_tokens.ids", "embed_tokens.rows"
INDEX_TENSORS = (EMBED_IDS,)      # the only integer tensors a served adapter may hold (row indices, never weights)
SHORT_TO_MODULE = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
                   "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
                   "down_proj": "mlp.down_proj"}


class AdapterError(ValueError):
    """A served adapter that must not be used. str() = '<file>: tensor <name>: <reason>'."""

    def __init__(self, file: str | Path, reason: str, tensor: str | None = None):
        self.file, self.tensor, self.reason = str(file), tensor, reason
        where = f"{self.file}: tensor {tensor!r}: " if tensor else f"{self.file}: "
        super().__init__(where + reason)


def module_name(module: str) -> str:
    """'q_proj' -> 'self_attn.q_proj'; qualified names pass through."""
    return SHORT_TO_MODULE.get(module, module)


def lora_key(layer: int, module: str, which: str) -> str:
    """PEFT key of A or B for one layer: base_model.model.model.layers.{i}.{module}.lora_{which}.weight."""
    return f"{PEFT_PREFIX}layers.{layer}.{module_name(module)}.lora_{which}.weight"
