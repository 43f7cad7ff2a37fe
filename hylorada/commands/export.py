"""`hylorada export CHECKPOINT OUT_DIR [--base MODEL_DIR]`: native checkpoint -> served form.

Per adapted linear (checkpoint keys model.layers.{i}.{module}.hylorada.*), functional.fold_to_served:

    A  = lora_A [r, in]                  B' = s * lora_B [out, r]            (adapter_model.safetensors)
    c  = 1 + (1 - beta) * (m_eff / ||W + s B A|| - 1)   [out]               (hylorada_dynamic.safetensors)
    w_pos = position_scale []            position_bias = position_bias.bias [nb]

DAA (model.layers.{i}.self_attn.daa.*) and landmarks (model.layers.{i}.mlp.landmark.*) are copied
under layers.{i}.daa.* / layers.{i}.landmark.*; trained RMSNorm weights (model.layers.{i}.*_layernorm.weight,
model.norm.weight) under layers.{i}.*_layernorm.weight / norm.weight, with "norms": true in hylorada.json (the
server applies them to the adapter's tokens). Trained input embeddings (model.embed_tokens.weight) become the rows
that differ from the base's, embed_tokens.ids [k] / embed_tokens.rows [k, hidden] (functional.changed_rows), with
"embeddings": true. A base that ties input and output embeddings (SmolLM2) would change its output projection with
them, and a trained output projection (lm_head.weight, older checkpoints) is a full [vocab, hidden] matrix: neither is
served per adapter, so export refuses them and points at `hylorada merge`.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from hylorada import functional as F
from hylorada.commands.errors import report_written
from hylorada.format.base import base_config, base_shape_hash, read_base_tensors, served_base
from hylorada.format.layout import EMBED_IDS, EMBED_ROWS, NORM_KEY, AdapterError
from hylorada.format.load import first_nonfinite
from hylorada.format.write import write_served

ADAPTER_KEY = re.compile(r"^model\.layers\.(\d+)\.([\w.]+)\.hylorada\.(\w+)$")
DAA_KEY = re.compile(r"^model\.layers\.(\d+)\.self_attn\.daa\.(head_scale|bucket_bias)$")
LANDMARK_KEY = re.compile(r"^model\.layers\.(\d+)\.mlp\.landmark\.(keys|values|gate)$")
NORM_STATE_KEY = re.compile(r"^model\.(layers\.\d+\.(?:input_layernorm|post_attention_layernorm)\.weight|norm\.weight)$")
EMBED_STATE_KEY = "model.embed_tokens.weight"
PARTS = ("lora_A", "lora_B", "magnitude", "magnitude_init", "magnitude_gate", "residual_weight", "position_scale")

def served_meta(config, hf_config) -> dict:
    """hylorada.json fields that come from the training config (dynamic parts, RoPE, attention)."""
    rope = None
    if config.rope_scaling_type is not None:
        from hylorada.method.rope import rope_scaling_meta
        rope = rope_scaling_meta(config, hf_config)
    buckets = {"num_buckets": config.num_position_buckets, "max_position": config.bucket_max_position}
    return {"kind": "hylorada",
            "position_bias": dict(buckets) if config.position_bias_enabled else None,
            "daa": dict(buckets) if config.daa_enabled else None,
            "landmarks": {"num_landmarks": config.num_landmarks} if config.landmark_enabled else None,
            "rope_scaling": rope,
            "attention": {"mode": config.attention_mode, "sink_tokens": config.s2_sink_tokens,
                          "window": config.sink_window, "s2_group_size_ratio": config.s2_group_size_ratio}}

def fold_checkpoint(state: dict[str, torch.Tensor], config, base_dir: str | Path, source: str = "state",
                    full_tensors: dict | None = None):
    """Native state dict -> (lora {(i, module): (A, B')}, c {(i, module): c}, dynamic {name: tensor}).

    All folding in float32 with functional.fold_to_served; W is read from the base's safetensors.
    Trained norms and input-embedding rows go into `dynamic` (served per adapter). Other full base tensors (the
    output projection; embeddings of a tied base) are refused — or, with the norms and embeddings, collected
    whole into `full_tensors` (merge).
    """
    per: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    dynamic: dict[str, torch.Tensor] = {}
    foreign = []
    if (bad := first_nonfinite(state)) is not None:
        raise AdapterError(source, "contains NaN or Inf", bad)
    for k, t in state.items():
        if (m := ADAPTER_KEY.match(k)) and m.group(3) in PARTS:
            per.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = t
        elif k == "position_bias.bias":
            dynamic["position_bias"] = t
        elif (m := DAA_KEY.match(k)):
            dynamic[f"layers.{m.group(1)}.daa.{m.group(2)}"] = t
        elif (m := LANDMARK_KEY.match(k)):
            dynamic[f"layers.{m.group(1)}.landmark.{m.group(2)}"] = t
        elif (m := NORM_STATE_KEY.match(k)) and full_tensors is None:
            dynamic[m.group(1)] = t
        elif k == EMBED_STATE_KEY and full_tensors is None and not base_config(base_dir).tie_word_embeddings:
            base = read_base_tensors(base_dir, [k])[k].to(t.dtype)
            if base.shape != t.shape:
                raise AdapterError(source, f"shape {list(t.shape)} != the base's {list(base.shape)}", k)
            ids, rows = F.changed_rows(t, base)
            if ids.numel():
                dynamic[EMBED_IDS], dynamic[EMBED_ROWS] = ids, rows
        else:
            foreign.append(k)
    if foreign and full_tensors is not None:
        full_tensors.update({k: state[k] for k in foreign})
    elif foreign:
        tied = EMBED_STATE_KEY in foreign and base_config(base_dir).tie_word_embeddings
        why = ("trained embeddings of a base that ties them to its output projection (tie_word_embeddings) change "
               "that projection too, which is not served per adapter" if tied else
               "a full base tensor (a trained output projection) cannot be carried by a served adapter")
        raise AdapterError(source, f"{why}; use `hylorada merge` to write a standalone model instead "
                           f"({len(foreign)} such tensors)", EMBED_STATE_KEY if tied else foreign[0])
    W = read_base_tensors(base_dir, [f"model.layers.{i}.{mod}.weight" for i, mod in per])
    f32 = torch.float32
    lora, c = {}, {}
    for (i, mod), p in sorted(per.items()):
        missing = [n for n in ("lora_A", "lora_B", "magnitude_init") if n not in p]
        if missing:
            raise AdapterError(source, "missing", f"model.layers.{i}.{mod}.hylorada.{missing[0]}")
        zero = torch.zeros((), dtype=f32)
        m = p.get("magnitude", p["magnitude_init"]).to(f32)
        A, Bf, c[(i, mod)] = F.fold_to_served(W[f"model.layers.{i}.{mod}.weight"].to(f32), p["lora_A"].to(f32),
                                              p["lora_B"].to(f32), config.scaling, m, p["magnitude_init"].to(f32),
                                              p.get("magnitude_gate", zero).to(f32), p.get("residual_weight", zero).to(f32))
        lora[(i, mod)] = (A, Bf)
        if config.position_bias_enabled:
            dynamic[f"layers.{i}.{mod}.w_pos"] = p["position_scale"].to(f32).reshape(())
    return lora, c, {k: v if k == EMBED_IDS else v.to(f32) for k, v in dynamic.items()}

def export(checkpoint: str | Path, out_dir: str | Path, base_dir: str | Path | None = None,
           max_rank: int | None = None, full_tensors: dict | None = None) -> Path:
    """Write the served form of a native checkpoint to out_dir (atomically, validated against the base).

    full_tensors: for `merge` only — receives trained embeddings/norms whole instead of serving or refusing them.
    """
    from hylorada.format.checkpoint import BASE_FILE, STATE_FILE, read_checkpoint
    ckpt = Path(checkpoint)
    from hylorada.config import ConfigError
    try:
        config, state, ident = read_checkpoint(ckpt)
    except FileNotFoundError as e:
        raise AdapterError(ckpt, str(e)) from None
    except ConfigError as e:
        raise AdapterError(ckpt / "hylorada_config.json", str(e)) from None
    base_dir = base_dir or ident.get("base_model_name_or_path")
    if not base_dir:
        raise AdapterError(ckpt / BASE_FILE, "no base recorded; pass --base MODEL_DIR")
    hf = base_config(base_dir)
    if ident.get("shape_hash") and ident["shape_hash"] != base_shape_hash(hf):
        raise AdapterError(ckpt / BASE_FILE, f"checkpoint made for another base: shape_hash {ident['shape_hash']} != "
                           f"{base_dir}'s {base_shape_hash(hf)}", "shape_hash")
    lora, c, dynamic = fold_checkpoint(state, config, base_dir, source=str(ckpt / STATE_FILE), full_tensors=full_tensors)
    meta = served_meta(config, hf) | {"base": served_base(hf, ident.get("base_model_name_or_path") or base_dir),
                                      "norms": any(NORM_KEY.match(k) for k in dynamic),
                                      "embeddings": EMBED_IDS in dynamic}
    return write_served(out_dir, lora=lora, c=c, extra_dynamic=dynamic, meta=meta,
                        base_name=str(ident.get("base_model_name_or_path") or base_dir), base_cfg=hf, max_rank=max_rank)

def add_arguments(p) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a native checkpoint folder (hylorada train / model.save)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="new folder for the served adapter (must not exist or be empty)")
    p.add_argument("--base", default=None, metavar="MODEL_DIR", help="base model folder (default: the one recorded)")
    p.add_argument("--max-rank", type=int, default=None, help="refuse adapters above this rank")

def run(args) -> int:
    return report_written("export", lambda: export(args.checkpoint, args.out_dir, args.base, max_rank=args.max_rank))
