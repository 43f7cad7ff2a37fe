"""`hylorada merge ADAPTER_DIR --base MODEL_DIR OUT_MODEL_DIR`: a static served adapter -> a standalone model.

Per adapted linear (functional.merge_weight, computed in float32, stored in the base's dtype):

    W' = diag(c) (W + B' A)          so  W' x + b == c * (W x + B' A x) + b   (the served form with p == 1)

Only static adapters merge. A position bias whose vector is all zeros is p == 1 exactly and merges;
any other position bias, DAA, landmarks or a non-full attention mode act per token or on attention
scores and are refused (the static part could merge, the per-token part stays a LoRA). The adapter's
RoPE scaling, if any, is written into the merged model's config; trained norms and input-embedding rows replace
the base's.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from hylorada import functional as F
from hylorada.commands.errors import report_written
from hylorada.format.atomic import atomic_dir
from hylorada.format.base import base_config
from hylorada.format.layout import NORM_KEY, AdapterError
from hylorada.format.adapter import ServedAdapter
from hylorada.format.load import load_served

SKIP_FROM_BASE = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json")


def unmergeable_parts(ad: ServedAdapter) -> list[str]:
    """The dynamic parts that keep this adapter from becoming one dense weight per layer."""
    parts = []
    pb = ad.position_bias
    if pb is not None and bool((pb != 0).any()):
        parts.append("position bias p(pos) (a per-token scale of the LoRA delta)")
    if ad.meta.daa is not None:
        parts.append("PositionalDAA (attention-score bias)")
    if ad.meta.landmarks is not None:
        parts.append("landmarks (a per-token read-out added to each MLP)")
    mode = ad.meta.attention.mode
    if mode != "full":
        parts.append(f"attention mode {mode!r}")
    return parts


def merge(adapter_dir: str | Path, base_dir: str | Path, out_dir: str | Path) -> Path:
    """Write base + adapter as one transformers model folder at out_dir (atomically).

    adapter_dir: a served adapter, or a native checkpoint (then trained embeddings/norms, which a LoRA
    cannot carry, are copied into the merged model too).
    """
    src = Path(adapter_dir)
    if not (src / "hylorada_state.safetensors").is_file():
        return _merge_served(src, base_dir, out_dir, {}, src / "hylorada.json")
    from hylorada.commands.export import export
    full: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory() as td:
        export(src, Path(td) / "served", base_dir, full_tensors=full)
        return _merge_served(Path(td) / "served", base_dir, out_dir, full, src)


def _merge_served(adapter_dir: Path, base_dir, out_dir, full: dict[str, torch.Tensor], blame: Path) -> Path:
    from transformers import AutoModelForCausalLM
    cfg = base_config(base_dir)
    ad = load_served(adapter_dir, base_config=cfg)
    parts = unmergeable_parts(ad)
    if parts:
        raise AdapterError(blame, "cannot merge into a standalone model: it has "
                           + "; ".join(parts) + ". The static part (A, B', c) could merge, but the per-token "
                           "part has no dense-weight form and must stay a LoRA: serve this adapter with hylorada-serve")
    if ad.meta.rope_scaling:
        from hylorada.method.rope import apply_rope_scaling
        apply_rope_scaling(cfg, ad.meta.rope_scaling)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), config=cfg)
    layers = model.model.layers
    with torch.no_grad():
        for i, mod in ad.modules():
            lin = layers[i].get_submodule(mod)
            A, Bf = ad.layer_lora(i, mod)
            c = ad.c(i, mod)
            W = F.merge_weight(lin.weight.float(), A.float(), Bf.float(), None if c is None else c.float())
            lin.weight.copy_(W.to(lin.weight.dtype))
        own = model.state_dict()
        full = {f"model.{k}": t for k, t in ad.dynamic.items() if NORM_KEY.match(k)} | full   # served trained norms
        for k, t in full.items():                  # trained embeddings / norms from a native checkpoint
            if k not in own or own[k].shape != t.shape:
                raise AdapterError(blame, "does not fit the base model", k)
            own[k].copy_(t.to(own[k].dtype))
        if (emb := ad.embedding_rows) is not None:  # served trained embedding rows (an untied base: checked on load)
            table = model.get_input_embeddings().weight
            table[emb[0]] = emb[1].to(table.dtype)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        for f in Path(base_dir).iterdir():        # tokenizer, chat template, ... (never the weights)
            if f.is_file() and f.name not in SKIP_FROM_BASE and not f.name.startswith("model-") and not (tmp / f.name).exists():
                shutil.copy2(f, tmp / f.name)
    return Path(out_dir)


def add_arguments(p) -> None:
    p.add_argument("adapter_dir", metavar="ADAPTER_DIR", help="a served adapter (export / convert-peft output)")
    p.add_argument("out_dir", metavar="OUT_MODEL_DIR", help="new folder for the merged transformers model")
    p.add_argument("--base", required=True, metavar="MODEL_DIR", help="the base model folder")


def run(args) -> int:
    return report_written("merge", lambda: merge(args.adapter_dir, args.base, args.out_dir))
