"""bench.method.rope_mix without an engine: the two adapter sets differ only in hylorada.json's rope_scaling."""
from __future__ import annotations

import json

from bench.method.rope_mix import SETTINGS, rope_copies


def sources(root, write) -> list:
    """One folder per setting with an unscaled hylorada.json; write(folder, i) adds its tensors."""
    out = []
    for i in range(len(SETTINGS)):
        d = root / "src" / f"a{i}"
        d.mkdir(parents=True)
        (d / "hylorada.json").write_text(json.dumps({"format_version": 1, "kind": "hylorada", "rope_scaling": None}))
        write(d, i)
        out.append(d)
    return out


def test_copies_differ_only_in_their_rope_setting(tmp_path):
    src = sources(tmp_path, lambda d, i: (d / "adapter_model.safetensors").write_bytes(bytes([i]) * 16))
    mixed, unscaled = rope_copies(src, tmp_path / "out", orig=4096)
    got = [json.loads((m / "hylorada.json").read_text())["rope_scaling"] for m in mixed]
    assert got[0] is None and got[1] == {"rope_type": "linear", "factor": 2.0, "original_max_position_embeddings": 4096}
    assert [g["rope_type"] for g in got[1:]] == ["linear", "yarn", "linear"]
    assert all(json.loads((u / "hylorada.json").read_text())["rope_scaling"] is None for u in unscaled)
    for m, u, s in zip(mixed, unscaled, src):
        assert (m / "adapter_model.safetensors").read_bytes() == (u / "adapter_model.safetensors").read_bytes() \
            == (s / "adapter_model.safetensors").read_bytes()
    rope_copies(src, tmp_path / "out", orig=4096)             # a second run replaces, never mixes


def test_the_last_mixed_copy_carries_trained_norms(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file
    src = sources(tmp_path, lambda d, i: save_file({"position_bias": torch.zeros(4)}, str(d / "hylorada_dynamic.safetensors")))
    norms = {"norm.weight": torch.ones(8)}
    mixed, unscaled = rope_copies(src, tmp_path / "out", orig=4096, norms=norms)
    last = load_file(str(mixed[-1] / "hylorada_dynamic.safetensors"))
    assert set(last) == {"position_bias", "norm.weight"}
    assert json.loads((mixed[-1] / "hylorada.json").read_text())["norms"] is True
    assert all(set(load_file(str(p / "hylorada_dynamic.safetensors"))) == {"position_bias"}
               for p in [*mixed[:-1], *unscaled])


def test_the_yarn_copy_carries_trained_embedding_rows_and_scaled_rows_reads_the_base(tmp_path, tiny_base):
    import torch
    from safetensors.torch import load_file, save_file

    from bench.method.rope_mix import scaled_rows
    src = sources(tmp_path, lambda d, i: save_file({"position_bias": torch.zeros(4)}, str(d / "hylorada_dynamic.safetensors")))
    rows = scaled_rows(tiny_base)
    assert rows["embed_tokens.ids"].tolist() == list(range(0, 512, 4)) and list(rows["embed_tokens.rows"].shape) == [128, 128]
    mixed, unscaled = rope_copies(src, tmp_path / "out", orig=4096, embeds=rows)
    assert SETTINGS[-2]["rope_type"] == "yarn"
    got = load_file(str(mixed[-2] / "hylorada_dynamic.safetensors"))
    assert set(got) == {"position_bias", "embed_tokens.ids", "embed_tokens.rows"}
    assert json.loads((mixed[-2] / "hylorada.json").read_text())["embeddings"] is True
    assert all(set(load_file(str(p / "hylorada_dynamic.safetensors"))) == {"position_bias"}
               for p in [*mixed[:-2], mixed[-1], *unscaled])
