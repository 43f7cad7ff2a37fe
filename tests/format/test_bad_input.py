"""Every bad input is refused with one error naming the file, the tensor and the reason, and no
command leaves anything (half-)written in OUT_DIR or beside it."""
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from hylorada.format.atomic import OutputExistsError, atomic_dir
from hylorada.commands.convert_peft import convert_peft
from hylorada.format.layout import AdapterError
from hylorada.format.load import load_served

A0 = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B0 = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
C0 = "layers.0.self_attn.q_proj.c"


def _edit(path, fn):
    t = load_file(str(path))
    fn(t)
    save_file(t, str(path))


def _refused(ad_dir, file, tensor, reason, **kw):
    with pytest.raises(AdapterError) as e:
        load_served(ad_dir, **kw)
    msg = str(e.value)
    assert file in msg and reason in msg and (tensor is None or repr(tensor) in msg), msg
    assert e.value.file.endswith(file) and e.value.tensor == tensor


def _clean(tmp_path, name="out"):
    """OUT_DIR absent and no temporary sibling left behind."""
    return not (tmp_path / name).exists() and not list(tmp_path.glob(f".{name}.tmp-*"))


@pytest.mark.parametrize("missing", ["adapter_config.json", "adapter_model.safetensors", "hylorada_dynamic.safetensors"])
def test_missing_file(served, missing):
    (served / missing).unlink()
    _refused(served, missing, None, "missing file")


def test_unknown_format_version(served):
    meta = json.loads((served / "hylorada.json").read_text())
    (served / "hylorada.json").write_text(json.dumps(meta | {"format_version": 2}))
    _refused(served, "hylorada.json", None, "unknown format_version 2")


def test_wrong_tensor_name(served, base_cfg):
    _edit(served / "adapter_model.safetensors", lambda t: t.__setitem__("lm_head.weight", torch.zeros(2, 2)))
    _refused(served, "adapter_model.safetensors", "lm_head.weight", "unexpected tensor name")


def test_tensor_name_not_in_base(served, base_cfg):
    def rename(t):
        for k in (A0, B0):
            t[k.replace("q_proj", "qq_proj")] = t.pop(k)
    _edit(served / "adapter_model.safetensors", rename)
    _edit(served / "hylorada_dynamic.safetensors", lambda t: t.pop(C0))
    _refused(served, "adapter_model.safetensors", A0.replace("q_proj", "qq_proj"), "the base has no linear layer",
             base_config=base_cfg)


def test_lora_half_missing(served):
    _edit(served / "adapter_model.safetensors", lambda t: t.pop(A0))
    _refused(served, "adapter_model.safetensors", B0, f"has no partner {A0!r}")


def test_unknown_side_tensor(served):
    _edit(served / "hylorada_dynamic.safetensors", lambda t: t.__setitem__("layers.0.mystery", torch.zeros(3)))
    _refused(served, "hylorada_dynamic.safetensors", "layers.0.mystery", "unknown tensor name")


def test_wrong_shape_for_base(served, base_cfg):
    def grow(t):   # consistent inside the adapter, wrong for the base (d_in 129 instead of 128)
        t[A0] = torch.cat([t[A0], torch.zeros(t[A0].shape[0], 1)], dim=1)
    _edit(served / "adapter_model.safetensors", grow)
    load_served(served)                                    # internally consistent
    _refused(served, "adapter_model.safetensors", A0, "does not fit the base", base_config=base_cfg)


def test_wrong_c_shape(served):
    _edit(served / "hylorada_dynamic.safetensors", lambda t: t.__setitem__(C0, t[C0][:-1].clone()))
    _refused(served, "hylorada_dynamic.safetensors", C0, "shape [127] != [d_out=128]")


@pytest.mark.parametrize("file,key,bad", [("hylorada_dynamic.safetensors", C0, float("nan")),
                                           ("adapter_model.safetensors", B0, float("inf"))])
def test_nan_inf(served, file, key, bad):
    def poison(t):
        t[key] = t[key].clone()
        t[key].view(-1)[3] = bad
    _edit(served / file, poison)
    _refused(served, file, key, "NaN or Inf")


def test_rank_above_server_limit(served):
    _refused(served, "adapter_model.safetensors", A0.replace("self_attn.q_proj", "mlp.down_proj"),
             "rank 4 is above the server's max_rank 2", max_rank=2)
    assert load_served(served, max_rank=4).rank == 4


def test_other_base_shape_hash(served, base_cfg):
    other = base_cfg.__class__.from_dict(base_cfg.to_dict() | {"intermediate_size": 192})
    _refused(served, "hylorada.json", "base.shape_hash", "adapter made for another base", base_config=other)


class _Bomb:
    """Unpickling this writes a marker file: proof the loader never unpickled it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_refused_never_unpickled(served, tmp_path):
    marker = tmp_path / "UNPICKLED"
    (served / "adapter_model.safetensors").unlink()
    (served / "adapter_model.bin").write_bytes(pickle.dumps(_Bomb(str(marker))))
    _refused(served, "adapter_model.bin", None, "pickle file found instead of adapter_model.safetensors")
    assert not marker.exists()


def test_convert_bad_inputs_leave_nothing(tiny_base, peft_factory, tmp_path):
    src, _ = peft_factory("p")
    marker = tmp_path / "UNPICKLED"
    pick = tmp_path / "pickled"
    pick.mkdir()
    (pick / "adapter_config.json").write_text((src / "adapter_config.json").read_text())
    (pick / "adapter_model.bin").write_bytes(pickle.dumps(_Bomb(str(marker))))
    with pytest.raises(AdapterError, match=r"adapter_model\.bin: pickle file found"):
        convert_peft(pick, tmp_path / "out", tiny_base)
    assert not marker.exists() and _clean(tmp_path)
    _edit(src / "adapter_model.safetensors", lambda t: t[B0.replace("q_proj", "v_proj")].view(-1).__setitem__(0, float("nan")))
    with pytest.raises(AdapterError, match=r"adapter_model\.safetensors: tensor '.*v_proj\.lora_B\.weight': contains NaN"):
        convert_peft(src, tmp_path / "out", tiny_base)
    assert _clean(tmp_path)


def test_export_bad_checkpoint_leaves_nothing(tiny_base, tmp_path):
    from hylorada import HyLoRADAConfig, HyLoRADAModel
    from hylorada.commands.export import export
    model = HyLoRADAModel.from_pretrained(tiny_base, HyLoRADAConfig(target_modules=("q_proj",)))
    with torch.no_grad():
        model.adapter_state_dict()["model.layers.1.self_attn.q_proj.hylorada.lora_B"].fill_(float("nan"))
    model.save(tmp_path / "ckpt")
    with pytest.raises(AdapterError, match=r"hylorada_state\.safetensors: tensor 'model\.layers\.1\.self_attn\.q_proj\.hylorada\.lora_B': contains NaN"):
        export(tmp_path / "ckpt", tmp_path / "out", tiny_base)
    assert _clean(tmp_path)


def test_atomic_dir_failure_and_existing_output(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "half.safetensors").write_bytes(b"123")
            raise RuntimeError("crash mid-write")
    assert _clean(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    with pytest.raises(OutputExistsError, match="refusing to overwrite"):
        with atomic_dir(tmp_path / "out"):
            pass
    assert os.listdir(tmp_path / "out") == ["keep"]


def test_cli_bad_base_and_bad_config(tiny_base, peft_factory, tmp_path, capsys):
    from hylorada.cli import main
    src, _ = peft_factory("p")
    assert main(["convert-peft", str(src), str(tmp_path / "out"), "--base", str(tmp_path / "no-base")]) == 1
    assert "no-base/config.json: missing file" in capsys.readouterr().out and _clean(tmp_path)
    from hylorada import HyLoRADAConfig, HyLoRADAModel
    HyLoRADAModel.from_pretrained(tiny_base, HyLoRADAConfig(target_modules=("q_proj",))).save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "hylorada_config.json").write_text('{"lora_rank": -1}')
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 1
    assert "hylorada_config.json: invalid HyLoRADAConfig" in capsys.readouterr().out and _clean(tmp_path)


def test_trained_norms_are_checked_like_every_side_tensor(served, base_cfg):
    """A norm weight needs "norms": true; it must be [hidden] for the base and within the bound; "norms": true with
    no norm tensor is refused too. A good one loads and is what ServedAdapter.norm returns."""
    N = "layers.1.post_attention_layernorm.weight"
    meta = json.loads((served / "hylorada.json").read_text())
    _edit(served / "hylorada_dynamic.safetensors", lambda t: t.__setitem__(N, torch.full((128,), 1.5)))
    _refused(served, "hylorada_dynamic.safetensors", N, "hylorada.json has norms false")
    (served / "hylorada.json").write_text(json.dumps(meta | {"norms": True}))
    assert torch.equal(load_served(served, base_config=base_cfg).norm("layers.1.post_attention_layernorm"),
                       torch.full((128,), 1.5))
    assert load_served(served).meta.dynamic_parts == ["norms"]
    _edit(served / "hylorada_dynamic.safetensors", lambda t: t.__setitem__(N, torch.ones(129)))
    _refused(served, "hylorada_dynamic.safetensors", N, "does not fit the base ([128])", base_config=base_cfg)
    _edit(served / "hylorada_dynamic.safetensors", lambda t: t.__setitem__(N, torch.ones(2, 64)))
    _refused(served, "hylorada_dynamic.safetensors", N, "must be 1-D")
    _edit(served / "hylorada_dynamic.safetensors", lambda t: t.__setitem__(N, torch.full((128,), 5e3)))
    with pytest.raises(AdapterError, match="above the bound 1000 for weight"):
        load_served(served, base_config=base_cfg)
    _edit(served / "hylorada_dynamic.safetensors", lambda t: t.pop(N))
    _refused(served, "hylorada_dynamic.safetensors", "layers.{i}.input_layernorm.weight", "says norms: true")
    (served / "hylorada.json").write_text(json.dumps(meta | {"norms": "yes"}))
    with pytest.raises(AdapterError, match="norms must be true or false"):
        load_served(served)


def test_trained_embedding_rows_are_checked_like_every_side_tensor(served, base_cfg):
    """embed_tokens.ids / .rows need "embeddings": true; ids int64 (the one integer tensor a file may hold), >= 0,
    strictly increasing, inside the base's vocabulary; rows [k, hidden] and within the bound; a tied base refuses
    them with a pointer to merge. A good pair loads and is what ServedAdapter.embedding_rows returns."""
    I, R, dyn = "embed_tokens.ids", "embed_tokens.rows", served / "hylorada_dynamic.safetensors"
    meta = json.loads((served / "hylorada.json").read_text())

    def rows(ids, d=128, dtype=torch.int64, value=0.5):
        def put(t):
            t[I] = torch.tensor(ids, dtype=dtype)
            t[R] = torch.full((len(ids), d), value)
        _edit(dyn, put)
    rows([2, 9, 40])
    _refused(served, "hylorada_dynamic.safetensors", I, "hylorada.json has embeddings false")
    (served / "hylorada.json").write_text(json.dumps(meta | {"embeddings": True}))
    ad = load_served(served, base_config=base_cfg)
    assert ad.embedding_rows[0].tolist() == [2, 9, 40] and torch.equal(ad.embedding_rows[1], torch.full((3, 128), 0.5))
    assert ad.meta.dynamic_parts == ["embeddings"]
    rows([2, 9, 40], dtype=torch.int32)
    _refused(served, "hylorada_dynamic.safetensors", I, "must be int64")
    rows([9, 2, 40])
    _refused(served, "hylorada_dynamic.safetensors", I, "strictly increasing")
    rows([2, 2, 40])
    _refused(served, "hylorada_dynamic.safetensors", I, "strictly increasing")
    rows([-1, 2])
    _refused(served, "hylorada_dynamic.safetensors", I, ">= 0")
    rows([2, 512])
    _refused(served, "hylorada_dynamic.safetensors", I, "beyond the base's vocabulary of 512", base_config=base_cfg)
    rows([2, 9], d=64)
    _refused(served, "hylorada_dynamic.safetensors", R, "does not fit the base ([k, 128])", base_config=base_cfg)
    _edit(dyn, lambda t: t.__setitem__(R, torch.ones(3, 128)))
    _refused(served, "hylorada_dynamic.safetensors", R, "!= [k=2 ids, hidden]")
    rows([2, 9], value=5e3)
    with pytest.raises(AdapterError, match="above the bound 1000 for rows"):
        load_served(served)
    rows([2, 9])
    import copy
    tied = copy.deepcopy(base_cfg)
    tied.tie_word_embeddings = True
    _refused(served, "hylorada_dynamic.safetensors", R, "ties its input and output embeddings", base_config=tied)
    _edit(dyn, lambda t: t.pop(I))
    _refused(served, "hylorada_dynamic.safetensors", I, "missing (hylorada.json says embeddings: true)")
    _edit(dyn, lambda t: t.__setitem__(C0.replace(".c", ".ids"), torch.tensor([1])))
    _refused(served, "hylorada_dynamic.safetensors", C0.replace(".c", ".ids"), "must be floating point")
