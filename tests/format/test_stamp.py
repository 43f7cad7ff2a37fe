"""hylorada.format.stamp: a checked stamp verifies only under its key and context and only while every file of the
folder is exactly as it was when the stamp was written; load_served's values_checked reads the LoRA from the header."""
from __future__ import annotations

import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from hylorada.format import stamp
from hylorada.format.layout import ADAPTER_WEIGHTS, AdapterError
from hylorada.format.load import load_served

KEY = bytes(range(32))
B0 = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


@pytest.fixture()
def folder(served):
    return served


@pytest.fixture()
def cfg(base_cfg):
    return base_cfg


def test_verifies_under_its_key_and_context_only(folder, cfg):
    ctx = stamp.context(cfg, 16)
    assert not stamp.stamp_ok(folder, KEY, ctx)                        # nothing written yet
    stamp.write_stamp(folder, KEY, ctx)
    assert stamp.stamp_ok(folder, KEY, ctx)
    assert not stamp.stamp_ok(folder, b"", ctx)                        # a reader without a key trusts nothing
    assert not stamp.stamp_ok(folder, bytes(32), ctx)                  # another server's key
    assert not stamp.stamp_ok(folder, KEY, stamp.context(cfg, 8))      # checked against another rank bound
    other = type(cfg).from_dict(cfg.to_dict() | {"intermediate_size": cfg.intermediate_size + 64})
    assert not stamp.stamp_ok(folder, KEY, stamp.context(other, 16))   # ... or another base


@pytest.mark.parametrize("change", ["rewrite", "touch", "replace", "remove_side", "add_meta"])
def test_any_file_change_voids_it(folder, cfg, change):
    ctx = stamp.context(cfg, 16)
    stamp.write_stamp(folder, KEY, ctx)
    w = folder / ADAPTER_WEIGHTS
    if change == "rewrite":                              # same size, new bytes: mtime moves
        t = load_file(str(w))
        t[B0] = t[B0] * 2
        save_file(t, str(w))
    elif change == "touch":
        st = w.stat()
        os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    elif change == "replace":                            # a new file under the old name, times copied
        shutil.copy2(w, folder / "x")
        os.replace(folder / "x", w)
    elif change == "remove_side":
        (folder / "hylorada_dynamic.safetensors").unlink()
    else:
        (folder / "hylorada.json").write_text((folder / "hylorada.json").read_text() + " ")
    assert not stamp.stamp_ok(folder, KEY, ctx)


def test_unreadable_stamps_do_not_verify(folder, cfg, tmp_path):
    ctx = stamp.context(cfg, 16)
    stamp.write_stamp(folder, KEY, ctx)
    good = (folder / stamp.STAMP).read_text()
    (folder / stamp.STAMP).write_text(good + "0" * 300)               # oversized
    assert not stamp.stamp_ok(folder, KEY, ctx)
    (tmp_path / "s").write_text(good)
    (folder / stamp.STAMP).unlink()
    (folder / stamp.STAMP).symlink_to(tmp_path / "s")                 # a link, even to the right digest
    assert not stamp.stamp_ok(folder, KEY, ctx)
    (folder / stamp.STAMP).unlink()
    (folder / stamp.STAMP).write_bytes(b"\xff\xfe")
    assert not stamp.stamp_ok(folder, KEY, ctx)


def test_short_keys_are_refused(folder, cfg):
    with pytest.raises(ValueError, match="at least 16 bytes"):
        stamp.write_stamp(folder, b"short", stamp.context(cfg, 16))


def test_values_checked_reads_shapes_only_and_keeps_every_other_part(folder, cfg):
    """The LoRA tensors come back on the meta device with the file's shapes and dtypes; the side file, meta, rank
    and size of the side part equal a full load's."""
    full = load_served(folder, base_config=cfg, max_rank=16)
    fast = load_served(folder, base_config=cfg, max_rank=16, values_checked=True)
    assert set(fast.lora) == set(full.lora)
    assert all(t.device.type == "meta" and t.shape == full.lora[k].shape and t.dtype == full.lora[k].dtype
               for k, t in fast.lora.items())
    assert fast.rank == full.rank and fast.meta == full.meta and fast.kind == full.kind
    assert set(fast.dynamic) == set(full.dynamic) and all(torch.equal(fast.dynamic[k], full.dynamic[k]) for k in full.dynamic)


def test_values_checked_skips_value_checks_but_not_structure(folder, cfg):
    """What a stamp vouches for (values) is not checked again; what it does not (fit to this base, the rank
    bound, names) always is."""
    w = folder / ADAPTER_WEIGHTS
    t = load_file(str(w))
    t[B0].view(-1)[0] = float("nan")
    save_file(t, str(w))
    with pytest.raises(AdapterError, match="NaN"):
        load_served(folder, base_config=cfg, max_rank=16)
    load_served(folder, base_config=cfg, max_rank=16, values_checked=True)      # the values are not read
    with pytest.raises(AdapterError, match="above the server's max_rank"):
        load_served(folder, base_config=cfg, max_rank=2, values_checked=True)
    small = type(cfg).from_dict(cfg.to_dict() | {"intermediate_size": cfg.intermediate_size + 64})
    with pytest.raises(AdapterError, match="adapter made for another base"):
        load_served(folder, base_config=small, max_rank=16, values_checked=True)
