"""`hylorada convert-peft PEFT_DIR OUT_DIR --base MODEL_DIR`: a PEFT LoRA / rsLoRA / DoRA adapter -> served form.

Per adapted linear (PEFT scale s per module, from r/lora_alpha/use_rslora/rank_pattern/alpha_pattern):

    B' = s * B                                   (adapter_model.safetensors, scale 1 for PEFT and vLLM)
    c  = blend_scale(m_eff=m, n=||W + s B A||, beta=0) = m / n      (DoRA only; plain LoRA has no c)

Different ranks per module are zero-padded to the largest rank (zero rows of A / columns of B'
add nothing), so the output has one r and lora_alpha == r. Lossless: the served reference
equals PEFT's own forward.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from hylorada import functional as F
from hylorada.commands.errors import report_written
from hylorada.format.base import base_config, read_base_tensors, served_base
from hylorada.format.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LORA_KEY, AdapterError, lora_key
from hylorada.format.load import read_json, read_tensors
from hylorada.format.peft import check_convertible, check_fields, peft_scaling
from hylorada.format.write import write_served

DORA_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.([\w.]+)\.lora_magnitude_vector(?:\.weight)?$")


# --- PEFT -> served -----------------------------------------------------------------------------

def convert_peft(peft_dir: str | Path, out_dir: str | Path, base_dir: str | Path, max_rank: int | None = None) -> Path:
    """Convert a saved PEFT LoRA/rsLoRA/DoRA adapter (safetensors) into the served form at out_dir."""
    src = Path(peft_dir)
    cf, wf = src / ADAPTER_CONFIG, src / ADAPTER_WEIGHTS
    cfg = read_json(cf)
    check_convertible(cf, cfg)
    check_fields(cf, cfg)
    state = read_tensors(wf)
    bcfg = base_config(base_dir)
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for k, t in state.items():
        if (m := LORA_KEY.match(k)):
            pairs.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = t
        elif (m := DORA_KEY.match(k)):
            pairs.setdefault((int(m.group(1)), m.group(2)), {})["m"] = t
        else:
            raise AdapterError(wf, "not a LoRA/DoRA tensor of a decoder linear (base biases, embeddings and other "
                               "trained base tensors cannot be carried by a LoRA; merge with PEFT instead)", k)
    dora = bool(cfg.get("use_dora"))
    W = read_base_tensors(base_dir, [f"model.layers.{i}.{mod}.weight" for i, mod in pairs]) if dora else {}
    lora, c = {}, {}
    for (i, mod), p in sorted(pairs.items()):
        for part in ("A", "B") + (("m",) if dora else ()):
            if part not in p:
                name = lora_key(i, mod, part) if part != "m" else f"base_model.model.model.layers.{i}.{mod}.lora_magnitude_vector"
                raise AdapterError(wf, "missing" + (" (use_dora is true)" if part == "m" else ""), name)
        A, B = p["A"], p["B"]
        s = peft_scaling(cfg, i, mod, A.shape[0])
        lora[(i, mod)] = (A, (s * B).to(B.dtype))
        if dora:
            w = W[f"model.layers.{i}.{mod}.weight"]
            if w.shape[1] != A.shape[1] or w.shape[0] != B.shape[0]:
                raise AdapterError(wf, f"shape {list(A.shape)} x {list(B.shape)} does not fit the base weight "
                                   f"{list(w.shape)}", lora_key(i, mod, "A"))
            f32 = torch.float32
            n = F.weight_norm(w.to(f32), A.to(f32), B.to(f32), s)
            c[(i, mod)] = F.blend_scale(p["m"].to(f32), n, torch.tensor(float("-inf")))  # beta = 0: c = m / n
    meta = {"kind": "dora" if dora else "lora", "base": served_base(bcfg, base_dir),
            "source": {"peft_dir": str(src), "use_rslora": bool(cfg.get("use_rslora")), "use_dora": dora}}
    return write_served(out_dir, lora=lora, c=c, extra_dynamic={}, meta=meta, base_name=str(base_dir),
                        base_cfg=bcfg, task_type=cfg.get("task_type") or "CAUSAL_LM", max_rank=max_rank)


def add_arguments(p) -> None:
    p.add_argument("peft_dir", metavar="PEFT_DIR", help="folder with adapter_config.json + adapter_model.safetensors")
    p.add_argument("out_dir", metavar="OUT_DIR", help="new folder for the served adapter (must not exist or be empty)")
    p.add_argument("--base", required=True, metavar="MODEL_DIR", help="the base model folder (DoRA norms, shape checks)")
    p.add_argument("--max-rank", type=int, default=None, help="refuse adapters above this rank")


def run(args) -> int:
    return report_written("convert-peft", lambda: convert_peft(args.peft_dir, args.out_dir, args.base, max_rank=args.max_rank))
