"""Broken adapter folders, each made from a good served-form folder (the demo LoRA), for the reliability tests and
the soak (bench/soak/traffic.py). `BUILDERS[case](good, dst, base)` writes DIR/<name>; `EXPECT[case]` is a fragment of the
refusal reason the server must give. No builder touches anything outside `dst` except `symlink_dir` (which points
a link at a valid copy kept outside DIR/) and `pickle_only` (whose pickle would create `sentinel` if unpickled).
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

W = "adapter_model.safetensors"
Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
Q_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


def _copy(good: Path, dst: Path) -> Path:
    shutil.copytree(good, dst)
    return dst


def _edit_tensors(good: Path, dst: Path, edit) -> Path:
    _copy(good, dst)
    t = load_file(str(dst / W))
    edit(t)
    save_file({k: v.contiguous() for k, v in t.items()}, str(dst / W))
    return dst


def _edit_meta(good: Path, dst: Path, edit) -> Path:
    _copy(good, dst)
    meta = json.loads((dst / "hylorada.json").read_text())
    edit(meta)
    (dst / "hylorada.json").write_text(json.dumps(meta))
    return dst


def empty(good, dst, base=None):
    dst.mkdir()
    return dst


def missing_weights(good, dst, base=None):
    _copy(good, dst)
    (dst / W).unlink()
    return dst


def truncated(good, dst, base=None):
    _copy(good, dst)
    data = (dst / W).read_bytes()
    (dst / W).write_bytes(data[: len(data) // 2])
    return dst


def random_bytes(good, dst, base=None):
    _copy(good, dst)
    (dst / W).write_bytes(os.urandom(8192))
    return dst


def wrong_names(good, dst, base=None):
    def edit(t):                                   # the q_proj pair renamed to keys no base layer has
        t["base_model.model.weird.lora_A.weight"], t["base_model.model.weird.lora_B.weight"] = t.pop(Q_A), t.pop(Q_B)
    return _edit_tensors(good, dst, edit)


def wrong_shapes(good, dst, base=None):
    def edit(t):                                   # consistent A/B pair, but d_in one wider than the base's
        t[Q_A] = torch.cat([t[Q_A], t[Q_A][:, :1]], dim=1)
    return _edit_tensors(good, dst, edit)


def rank_too_high(good, dst, base=None, rank: int = 64):
    def edit(t):                                   # every pair zero-padded to `rank` (same function, higher rank)
        for k in list(t):
            if k.endswith("lora_A.weight"):
                t[k] = torch.cat([t[k], t[k].new_zeros(rank - t[k].shape[0], t[k].shape[1])])
            elif k.endswith("lora_B.weight"):
                t[k] = torch.cat([t[k], t[k].new_zeros(t[k].shape[0], rank - t[k].shape[1])], dim=1)
    _edit_tensors(good, dst, edit)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**cfg, "r": rank, "lora_alpha": rank}))
    return dst


def nan_weights(good, dst, base=None):
    def edit(t):
        t[Q_B] = t[Q_B].clone()
        t[Q_B][0, 0] = float("nan")
    return _edit_tensors(good, dst, edit)


def inf_weights(good, dst, base=None):
    def edit(t):
        t[Q_A] = t[Q_A].clone()
        t[Q_A][1, 2] = float("inf")
    return _edit_tensors(good, dst, edit)


class _Touch:
    """Unpickling this creates the file at `path`: proof that a pickle was (or was not) loaded."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def pickle_only(good, dst, base=None, sentinel: Path | None = None):
    dst.mkdir()
    shutil.copy(good / "adapter_config.json", dst)
    payload = _Touch(str(sentinel)) if sentinel else {"not": "a tensor"}
    (dst / "adapter_model.bin").write_bytes(pickle.dumps(payload))
    return dst


def unknown_format(good, dst, base=None):
    return _edit_meta(good, dst, lambda m: m.__setitem__("format_version", 99))


def other_base(good, dst, base=None):
    return _edit_meta(good, dst, lambda m: m["base"].update(name="some-other-model", shape_hash="0123456789abcdef"))


def symlink_dir(good, dst, base=None, outside: Path | None = None):
    """DIR/<name> is a symlink to a (valid) adapter folder outside DIR/."""
    target = outside or dst.parent.parent / f"outside-{dst.name}"
    if not target.exists():
        _copy(good, target)
    dst.symlink_to(target, target_is_directory=True)
    return dst


def symlink_file(good, dst, base=None, outside: Path | None = None):
    """DIR/<name>/adapter_model.safetensors is a symlink to a file outside DIR/."""
    target = outside or dst.parent.parent / f"outside-{dst.name}.safetensors"
    if not target.exists():
        shutil.copy(good / W, target)
    _copy(good, dst)
    (dst / W).unlink()
    (dst / W).symlink_to(target)
    return dst


BUILDERS = {"empty": empty, "missing-weights": missing_weights, "truncated": truncated, "random-bytes": random_bytes,
            "wrong-names": wrong_names, "wrong-shapes": wrong_shapes, "rank-too-high": rank_too_high,
            "nan": nan_weights, "inf": inf_weights, "pickle-only": pickle_only, "unknown-format": unknown_format,
            "other-base": other_base, "symlink-dir": symlink_dir, "symlink-file": symlink_file}

EXPECT = {"empty": "empty folder", "missing-weights": "adapter_model.safetensors: missing",
          "truncated": "adapter_model.safetensors", "random-bytes": "adapter_model.safetensors",
          "wrong-names": "unexpected tensor name", "wrong-shapes": "does not fit the base",
          "rank-too-high": "above the server's max_rank", "nan": "NaN or Inf", "inf": "NaN or Inf",
          "pickle-only": "never", "unknown-format": "unknown format_version 99",
          "other-base": "another base", "symlink-dir": "outside the adapters folder",
          "symlink-file": "outside the adapters folder"}
