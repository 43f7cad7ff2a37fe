"""Broken adapter folders, each made from a good served-form folder (the demo LoRA), for the reliability tests and
the soak (bench/soak/traffic.py). `BUILDERS[case](good, dst, base)` writes DIR/<name>; `EXPECT[case]` is a fragment of the
refusal reason the server must give. No builder touches anything outside `dst` except `symlink_dir` (which points
a link at a valid copy kept outside DIR/), `pickle_only` (whose pickle would create `sentinel` if unpickled) and
`newline_name` (which writes DIR/<name>\n, a name `$` would have let through, and returns that path). Every builder
returns the folder it wrote; remove them with `remove` (a 1,100-deep tree is too deep for shutil.rmtree on 3.11).
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


def _built_aside(dst: Path, fill) -> Path:
    """fill(tmp) on a hidden sibling, then one rename to dst: a slow builder is never seen (and loaded) half-built."""
    tmp = dst.with_name(f".{dst.name}.building")
    fill(tmp)
    tmp.rename(dst)
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


def scaled_b(good, dst, base=None, factor: float = 1e30):
    """lora_B x 1e30: finite, and ||B'A|| ~1e30 x the base weight's norm."""
    def edit(t):
        for k in [k for k in t if k.endswith("lora_B.weight")]:
            t[k] = t[k] * factor
    return _edit_tensors(good, dst, edit)


def huge_delta(good, dst, base=None, value: float = 100.0):
    """Every A and B' entry 100: each small (under the absolute bound of 1e4 used without the base), but
    ||B'A|| is millions of times the base weight's norm — only the base's norms catch it."""
    def edit(t):
        for k in t:
            t[k] = torch.full_like(t[k], value)
    return _edit_tensors(good, dst, edit)


def deep_nesting(good, dst, base=None, depth: int = 1100):
    """A valid adapter with `depth` nested sub-folders (os.walk recursed into them until RecursionError)."""
    def fill(tmp):
        _copy(good, tmp)
        p = tmp
        for _ in range(depth):
            p = p / "d"
            p.mkdir()
    return _built_aside(dst, fill)


def many_folders(good, dst, base=None, n: int = 20_000):
    """A valid adapter with `n` empty sub-folders (each scan used to walk all of them on the event loop)."""
    def fill(tmp):
        _copy(good, tmp)
        for i in range(n):
            (tmp / f"e{i}").mkdir()
    return _built_aside(dst, fill)


def bogus_rope(good, dst, base=None):
    return _edit_meta(good, dst, lambda m: m.__setitem__("rope_scaling", {"rope_type": "bogus"}))


def deep_json(good, dst, base=None, depth: int = 100_000):
    """hylorada.json holding a 100,000-deep array (json.loads recursed until RecursionError)."""
    _copy(good, dst)
    (dst / "hylorada.json").write_text("[" * depth + "]" * depth)
    return dst


def base_garbage(good, dst, base=None):
    return _edit_meta(good, dst, lambda m: m.__setitem__("base", "garbage"))


def attention_list(good, dst, base=None):
    return _edit_meta(good, dst, lambda m: m.__setitem__("attention", ["full"]))


def newline_name(good, dst, base=None):
    """A valid adapter under DIR/<name>\n (a regex ending in `$` matched it). Returns that path."""
    return _copy(good, dst.with_name(dst.name + "\n"))


def sparse_file(good, dst, base=None, size: int = 4 << 30):
    """adapter_model.safetensors extended to 4 GiB with a hole: a few KiB on disk, 4 GiB to copy."""
    _copy(good, dst)
    os.truncate(dst / W, size)
    return dst


def huge_header(good, dst, base=None, tensors: int = 1_000_000):
    """A ~60 MB safetensors header of 1M zero-size tensors (a 67 MB one took 19 s and 1.28 GB to refuse)."""
    body = "{" + ",".join(f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(tensors)) + "}"
    data = body.encode()

    def fill(tmp):
        _copy(good, tmp)
        (tmp / W).write_bytes(len(data).to_bytes(8, "little") + data)
    return _built_aside(dst, fill)


def remove(path: Path) -> None:
    """Delete what a builder wrote, however deep (iteratively: no recursion), links not followed."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if not path.exists():
        return
    folders, i = [str(path)], 0
    while i < len(folders):
        with os.scandir(folders[i]) as it:
            for de in it:
                if de.is_dir(follow_symlinks=False):
                    folders.append(de.path)
                else:
                    os.unlink(de.path)
        i += 1
    for f in reversed(folders):
        os.rmdir(f)


BUILDERS = {"empty": empty, "missing-weights": missing_weights, "truncated": truncated, "random-bytes": random_bytes,
            "wrong-names": wrong_names, "wrong-shapes": wrong_shapes, "rank-too-high": rank_too_high,
            "nan": nan_weights, "inf": inf_weights, "pickle-only": pickle_only, "unknown-format": unknown_format,
            "other-base": other_base, "symlink-dir": symlink_dir, "symlink-file": symlink_file,
            "absurd-b": scaled_b, "absurd-delta": huge_delta, "deep-nesting": deep_nesting,
            "many-folders": many_folders, "bogus-rope": bogus_rope, "deep-json": deep_json,
            "base-garbage": base_garbage, "attention-list": attention_list, "newline-name": newline_name,
            "sparse-file": sparse_file, "huge-header": huge_header}

EXPECT = {"empty": "empty folder", "missing-weights": "adapter_model.safetensors: missing",
          "truncated": "adapter_model.safetensors: not a readable safetensors file",
          "random-bytes": "adapter_model.safetensors: not a readable safetensors file",
          "wrong-names": "unexpected tensor name", "wrong-shapes": "does not fit the base",
          "rank-too-high": "above the server's max_rank", "nan": "NaN or Inf", "inf": "NaN or Inf",
          "pickle-only": "pickle files such as .bin are never loaded", "unknown-format": "unknown format_version 99",
          "other-base": "another base", "symlink-dir": "outside the adapters folder",
          "symlink-file": "outside the adapters folder",
          "absurd-b": "x the base weight's norm", "absurd-delta": "x the base weight's norm",
          "deep-nesting": "nested more than", "many-folders": "files and folders",
          "bogus-rope": "rope_scaling.rope_type must be one of", "deep-json": "nested too deeply",
          "base-garbage": "base must be an object", "attention-list": "attention must be an object",
          "newline-name": "name must match",
          "sparse-file": "sparse file", "huge-header": "safetensors header of"}
