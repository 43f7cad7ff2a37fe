"""`hylorada convert-peft PEFT_DIR OUT_DIR --base MODEL_DIR`: a PEFT LoRA / rsLoRA / DoRA adapter -> served form.

Per adapted linear (PEFT scale s per module, from r/lora_alpha/use_rslora/rank_pattern/alpha_pattern):

    B' = s * B                                   (adapter_model.safetensors, scale 1 for PEFT and vLLM)
    c  = blend_scale(m_eff=m, n=||W + s B A||, beta=0) = m / n      (DoRA only; plain LoRA has no c)

Different ranks per module are zero-padded to the largest rank (zero rows of A / columns of B'
add nothing), so the output has one r and lora_alpha == r. Lossless: the served reference
equals PEFT's own forward.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import functional as F
from .base_id import served_base
from .atomic import atomic_dir
from .served import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, DYNAMIC, FORMAT_VERSION, LORA_KEY, META, AdapterError,
                     peft_scaling, read_json, read_tensors, load_served, lora_key)

DORA_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.([\w.]+)\.lora_magnitude_vector(?:\.weight)?$")


# --- the base model's weights, read lazily from safetensors ---------------------------------

def base_config(base_dir: str | Path):
    """The base's transformers config; AdapterError when base_dir is not a model folder."""
    from transformers import AutoConfig
    f = Path(base_dir) / "config.json"
    if not f.is_file():
        raise AdapterError(f, "missing file (--base must be a local transformers model folder)")
    return AutoConfig.from_pretrained(str(base_dir))


def read_base_tensors(base_dir: str | Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Tensors of the base checkpoint by HF name (single file or sharded index; safetensors only)."""
    from safetensors import safe_open
    d = Path(base_dir)
    index = d / "model.safetensors.index.json"
    if index.is_file():
        where = json.loads(index.read_text())["weight_map"]
    elif (d / "model.safetensors").is_file():
        where = {n: "model.safetensors" for n in names}
    else:
        raise AdapterError(d / "model.safetensors", "missing: the base must be a safetensors transformers folder")
    out: dict[str, torch.Tensor] = {}
    for file in sorted({where.get(n, "") for n in names}):
        if not file:
            raise AdapterError(d, "base has no tensor", next(n for n in names if n not in where))
        with safe_open(str(d / file), framework="pt") as f:
            keys = set(f.keys())
            for n in names:
                if where.get(n) == file:
                    if n not in keys:
                        raise AdapterError(d / file, "base has no tensor", n)
                    out[n] = f.get_tensor(n)
    return out


# --- writing the served form ------------------------------------------------------------------

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
    meta = {"format_version": FORMAT_VERSION, "position_bias": None, "daa": None, "landmarks": None,
            "rope_scaling": None, "attention": {"mode": "full"}} | meta | {"has_scale": bool(c)}
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS))
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(peft_cfg, indent=2) + "\n")
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        if dynamic:
            save_file(dynamic, str(tmp / DYNAMIC))
        load_served(tmp, base_config=base_cfg, max_rank=max_rank)   # never publish what we would refuse
    return Path(out_dir)


# --- PEFT -> served -----------------------------------------------------------------------------

def convert_peft(peft_dir: str | Path, out_dir: str | Path, base_dir: str | Path, max_rank: int | None = None) -> Path:
    """Convert a saved PEFT LoRA/rsLoRA/DoRA adapter (safetensors) into the served form at out_dir."""
    src = Path(peft_dir)
    cf, wf = src / ADAPTER_CONFIG, src / ADAPTER_WEIGHTS
    cfg = read_json(cf)
    if cfg.get("peft_type") != "LORA":
        raise AdapterError(cf, f"only PEFT LoRA/DoRA adapters convert (peft_type {cfg.get('peft_type')!r})")
    if cfg.get("lora_bias"):
        raise AdapterError(cf, "lora_bias is true: the served form and vLLM have no LoRA bias term; merge this "
                           "adapter with PEFT (merge_and_unload) instead")
    if cfg.get("modules_to_save"):
        raise AdapterError(cf, f"modules_to_save {cfg['modules_to_save']!r}: full trained modules cannot be "
                           "carried by a LoRA; merge with PEFT instead")
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
    from .atomic import OutputExistsError
    try:
        out = convert_peft(args.peft_dir, args.out_dir, args.base, max_rank=args.max_rank)
    except (AdapterError, OutputExistsError) as e:
        print(f"hylorada convert-peft: error: {e}")
        return 1
    print(f"wrote {out}")
    return 0
