"""Writing the served form: four files into a hidden temp folder, validated as the server would, then published.

    adapter_model.safetensors  A [r, in], B' [out, r] in PEFT keys (ranks zero-padded to the largest)
    adapter_config.json        PEFT LoRA config with lora_alpha == r (scale 1: the scale lives in B')
    hylorada.json              ServedMeta.to_json()
    hylorada_dynamic.safetensors  c, w_pos, position_bias, daa.*, landmark.*
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .atomic import atomic_dir
from .layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, DYNAMIC, FORMAT_VERSION, META, lora_key
from .load import load_served
from .meta import ServedMeta


def write_served(out_dir: str | Path, *, lora: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]],
                 c: dict[tuple[int, str], torch.Tensor], extra_dynamic: dict[str, torch.Tensor], meta: dict,
                 base_name: str, base_cfg, task_type: str | None = "CAUSAL_LM", max_rank: int | None = None) -> Path:
    """Write all four files atomically, then validate the result against the base before publishing.

    lora: (layer, 'self_attn.q_proj') -> (A [r_i, in], B' [out, r_i]); ranks are zero-padded to max r_i.
    c: (layer, module) -> [out]; extra_dynamic: side-file tensors by final name (w_pos, position_bias, ...).
    """
    r = max(a.shape[0] for a, _ in lora.values())
    tensors = {}
    for (i, mod), (A, Bf) in sorted(lora.items()):
        pad = r - A.shape[0]
        tensors[lora_key(i, mod, "A")] = torch.cat([A, A.new_zeros(pad, A.shape[1])]).contiguous()
        tensors[lora_key(i, mod, "B")] = torch.cat([Bf, Bf.new_zeros(Bf.shape[0], pad)], dim=1).contiguous()
    dynamic = {f"layers.{i}.{mod}.c": v.contiguous() for (i, mod), v in sorted(c.items())}
    dynamic.update({k: v.contiguous() for k, v in extra_dynamic.items()})
    shorts = sorted({mod.rsplit(".", 1)[-1] for _, mod in lora})
    peft_cfg = {"peft_type": "LORA", "task_type": task_type, "r": r, "lora_alpha": r, "use_rslora": False,
                "use_dora": False, "lora_dropout": 0.0, "bias": "none", "lora_bias": False, "fan_in_fan_out": False,
                "target_modules": shorts, "base_model_name_or_path": base_name, "inference_mode": True,
                "init_lora_weights": True, "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None}
    meta = ServedMeta.parse({"format_version": FORMAT_VERSION} | meta | {"has_scale": bool(c)}, META)
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS))
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(peft_cfg, indent=2) + "\n")
        (tmp / META).write_text(json.dumps(meta.to_json(), indent=2) + "\n")
        if dynamic:
            save_file(dynamic, str(tmp / DYNAMIC))
        load_served(tmp, base_config=base_cfg, max_rank=max_rank)   # never publish what we would refuse
    return Path(out_dir)
