"""The watcher path is total and bounded against hostile adapter folders (no vLLM: a fake engine, the real reader):
any exception while validating one folder refuses it with the reason and frees its copy; scans are iterative and
bounded (depth, entries, real bytes) and run off the event loop; the lock is not held while copying; only the
format's files are copied, and sparse or oversized ones are refused first; names end at \\Z; adapter content
cannot stop start-up (longest_context); with the base folder, absurd LoRA deltas are refused against its norms."""
from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

import hylorada.format.load as reader
from bench.soak import bad_adapters as bad
from hylorada_serve import publish, scan as scan_mod
from hylorada_serve.scan import NAME_RE, folder_signature
from hylorada_serve.store import AdapterStore
from hylorada_serve.watcher import HotSwapper

from .test_store import FakeEngine


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(base, a folder of the demo adapters): built once for this module."""
    from hylorada_serve.demo import prepare
    return prepare(tmp_path_factory.mktemp("hardening-demo"))


def swapper(tmp_path: Path, **kw) -> tuple[AdapterStore, HotSwapper, FakeEngine, Path, Path]:
    root, pub = tmp_path / "dir", tmp_path / "pub"
    root.mkdir()
    store = AdapterStore(root, stable_seconds=0.0)
    engine = FakeEngine()
    return store, HotSwapper(store, engine, pub, make_request=lambda n, uid, p: (n, uid, p), **kw), engine, root, pub


def copies(pub: Path) -> list[str]:
    return sorted(os.listdir(pub)) if pub.exists() else []


def statuses(store: AdapterStore) -> dict[str, tuple[str, str | None]]:
    return {s["name"]: (s["status"], s["reason"]) for s in store.status()}


def test_any_exception_from_validation_refuses_frees_and_recovers(tmp_path, demo, monkeypatch):
    _, built = demo
    store, sw, engine, root, pub = swapper(tmp_path)
    good = built / "demo-lora"
    shutil.copytree(good, root / "a")
    shutil.copytree(good, root / "boom")
    bad.base_garbage(good, root / "base-garbage")          # the two payloads the red team used
    bad.attention_list(good, root / "attention-list")
    real_load = reader.load_served
    broken = {"boom"}

    def load_served(path, *a, **kw):                       # an exception type no handler names
        if any(Path(path).name.startswith(n + "-v") for n in broken):
            raise AttributeError("'str' object has no attribute 'get'")
        return real_load(path, *a, **kw)
    monkeypatch.setattr(reader, "load_served", load_served)

    async def go():
        await sw.step()
        st = statuses(store)
        assert st["a"][0] == "ready" and "loading" not in {s for s, _ in st.values()}, st
        assert st["boom"][0] == "refused" and "AttributeError" in st["boom"][1], st
        assert st["base-garbage"][0] == "refused" and "base must be an object" in st["base-garbage"][1]
        assert st["attention-list"][0] == "refused" and "attention must be an object" in st["attention-list"][1]
        assert copies(pub) == [os.path.basename(store.serving()["a"].path)]      # refused copies freed
        # admin load / reload answer 'refused' with the reason (the app's 422), and leak no copy
        for force in (False, True):
            for name in ("boom", "base-garbage"):
                r = await sw.load(name, force=force)
                assert r["status"] == "refused" and r["reason"], r
        r = await sw.load("a", force=True)                  # a new version of a serving one: v2 serves
        broken.add("a")
        r = await sw.load("a", force=True)                  # refused reload: 'refused' answered, v2 keeps serving
        assert r["status"] == "refused" and "AttributeError" in r["reason"] and store.serving()["a"].number == 2
        assert copies(pub) == [os.path.basename(store.serving()["a"].path)]
        broken.clear()                                     # good content again: picked up by the next pass
        (root / "boom" / "adapter_config.json").write_text((good / "adapter_config.json").read_text() + " ")
        await sw.step()
        assert statuses(store)["boom"] == ("ready", None)
        shutil.rmtree(root / "a")                          # removal works
        await sw.step()
        assert "a" not in store.serving() and statuses(store)["a"][0] == "removed"
        assert copies(pub) == [os.path.basename(store.serving()["boom"].path)]
    asyncio.run(go())


def test_deep_nesting_is_refused_and_hot_swap_goes_on(tmp_path, demo):
    _, built = demo
    store, sw, engine, root, pub = swapper(tmp_path)
    good = built / "demo-lora"
    shutil.copytree(good, root / "a")
    try:
        bad.deep_nesting(good, root / "deep")              # 1,100 levels: os.walk raised RecursionError
        AdapterStore(root).scan()                          # what start-up runs first: no exception

        async def go():
            await sw.step()
            st = statuses(store)
            assert st["a"][0] == "ready" and st["deep"][0] == "refused" and "nested more than" in st["deep"][1]
            shutil.copytree(good, root / "b")              # new folders still load
            shutil.rmtree(root / "a")                      # removed ones stop serving
            await sw.step()
            assert set(store.serving()) == {"b"}
            r = await sw.load("deep")
            assert r["status"] == "refused" and "nested more than" in r["reason"]
            bad.deep_nesting(good, root / "b" / "sub", depth=10)   # a serving folder gaining a deep tree
            await sw.step()
            st = statuses(store)
            assert st["b"][0] == "ready" and "nested more than" in st["b"][1] and store.serving()["b"].number == 1
        asyncio.run(go())
    finally:
        bad.remove(root / "deep")


def test_many_empty_sub_folders_are_refused_cheaply(tmp_path):
    d = tmp_path / "wide"
    d.mkdir()
    (d / "adapter_model.safetensors").write_bytes(b"x")
    for i in range(20_000):
        (d / f"e{i}").mkdir()
    t0 = time.perf_counter()
    with pytest.raises(scan_mod.OverBound, match="files and folders"):
        folder_signature(d)
    assert time.perf_counter() - t0 < 0.5


def test_real_size_bounds_the_scan(tmp_path, monkeypatch):
    d = tmp_path / "big"
    d.mkdir()
    (d / "adapter_model.safetensors").write_bytes(os.urandom(1 << 20))
    (d / "hole").touch()
    os.truncate(d / "hole", 1 << 36)                       # 64 GiB apparent, nothing on disk: not counted
    monkeypatch.setattr(scan_mod, "MAX_ADAPTER_BYTES", 1 << 19)
    with pytest.raises(scan_mod.OverBound, match="on disk"):
        folder_signature(d)
    monkeypatch.setattr(scan_mod, "MAX_ADAPTER_BYTES", 4 << 20)
    assert len(folder_signature(d)) == 2


def test_scan_parse_and_copy_run_off_the_event_loop_without_the_lock(tmp_path, demo, monkeypatch):
    _, built = demo
    store, sw, engine, root, pub = swapper(tmp_path)
    shutil.copytree(built / "demo-lora", root / "a")
    seen = []
    walk, stage, check = scan_mod.folder_signature, publish.stage, publish.check

    def spy(what, f):
        def wrapped(*a, **kw):
            seen.append((what, threading.get_ident(), sw.lock.locked()))
            return f(*a, **kw)
        return wrapped
    monkeypatch.setattr(scan_mod, "folder_signature", spy("scan", walk))
    monkeypatch.setattr(publish, "stage", spy("copy", stage))
    monkeypatch.setattr(publish, "check", spy("check", check))

    async def go():
        await sw.step()
        return threading.get_ident()
    loop_thread = asyncio.run(go())
    assert "a" in store.serving()
    assert {w for w, _, _ in seen} == {"scan", "copy", "check"}
    assert all(t != loop_thread for _, t, _ in seen), seen
    assert not any(locked for w, _, locked in seen if w in ("copy", "check")), seen


def test_only_format_files_are_copied_and_sparse_or_oversized_are_refused_first(tmp_path, demo, monkeypatch):
    _, built = demo
    root = tmp_path / "dir"
    src = root / "a"
    shutil.copytree(built / "demo-hylorada", src)
    (src / "extra.safetensors").write_bytes(b"x" * 100)
    (src / "notes.json").write_text("{}")
    publish.stage(src, tmp_path / "pub-a", root, None)
    assert sorted(os.listdir(tmp_path / "pub-a")) == sorted(os.listdir(built / "demo-hylorada"))

    sp = bad.sparse_file(built / "demo-lora", root / "sparse", size=256 << 20)
    t0 = time.perf_counter()
    with pytest.raises(publish.AdapterRefused, match="sparse file"):
        publish.stage(sp, tmp_path / "pub-sparse", root, None)
    assert not (tmp_path / "pub-sparse").exists() and time.perf_counter() - t0 < 1.0

    monkeypatch.setattr(publish, "MAX_ADAPTER_BYTES", 4096)
    with pytest.raises(publish.AdapterRefused, match="refused before copying"):
        publish.stage(src, tmp_path / "pub-big", root, None)
    assert not (tmp_path / "pub-big").exists()


def test_a_trailing_newline_is_not_part_of_a_name(tmp_path, demo):
    _, built = demo
    assert NAME_RE.match("demo-lora\n") is None and NAME_RE.fullmatch("demo-lora\n") is None   # app.py uses match
    assert NAME_RE.match("demo-lora")
    store, sw, engine, root, pub = swapper(tmp_path)
    shutil.copytree(built / "demo-lora", root / "demo-lora")
    twin = bad.newline_name(built / "demo-lora", root / "demo-lora")

    async def go():
        await sw.step()
    asyncio.run(go())
    assert twin.name == "demo-lora\n" and set(store.serving()) == {"demo-lora"}
    assert statuses(store)["demo-lora\n"][0] == "refused" and len(engine.added) == 1


def test_adapter_content_cannot_stop_start_up(tmp_path, demo):
    """Four bogus RoPE folders count for nothing beside two good ones; a 100,000-deep hylorada.json and a 1,100-deep
    folder do not crash longest_context or the first scan."""
    _, built = demo
    lin = {"rope_type": "linear", "factor": 4.0, "original_max_position_embeddings": 4096}
    good = built / "demo-lora"
    for i in range(4):
        bad.bogus_rope(good, tmp_path / f"bogus{i}")
    for n in ("g1", "g2"):
        bad._edit_meta(good, tmp_path / n, lambda m: m.__setitem__("rope_scaling", lin))
    bad.deep_json(good, tmp_path / "deep-json")
    bad.newline_name(good, tmp_path / "g3")                 # refused by name: no vote either
    try:
        bad.deep_nesting(good, tmp_path / "deep")
        from types import SimpleNamespace
        assert publish.longest_context(tmp_path, SimpleNamespace(max_position_embeddings=4096)) == (16384, 2)
        store = AdapterStore(tmp_path, stable_seconds=0.0)
        to_load, _ = store.scan()
        assert "deep" not in to_load and store.entries["deep"].status == "refused"
    finally:
        bad.remove(tmp_path / "deep")


def test_absurd_deltas_are_refused_against_the_base_norms(tmp_path, demo, caplog):
    from hylorada.format.base import base_config
    base, built = demo
    cfg = base_config(base)
    for case in ("absurd-b", "absurd-delta"):
        d = bad.BUILDERS[case](built / "demo-lora", tmp_path / case)
        with pytest.raises(publish.AdapterRefused, match="x the base weight's norm"):
            publish.check(d, d, cfg, 16, base_dir=str(base))
    publish.check(tmp_path / "absurd-delta", tmp_path / "absurd-delta", cfg, 16)   # what the server did before
    for name in ("demo-lora", "demo-dora", "demo-hylorada"):
        publish.check(built / name, built / name, cfg, 16, base_dir=str(base))
    from unittest import mock                          # the warning itself, whatever logging config other
    with mock.patch.object(publish.log, "warning") as warn:   # in-process tests left (vLLM disables loggers)
        assert publish.base_norms(str(tmp_path)) is None   # not a model folder
    assert warn.call_count == 1 and "norms unreadable" in warn.call_args[0][0]


def test_a_file_vanishing_while_it_is_copied_is_a_change_not_a_refusal(tmp_path, demo, monkeypatch):
    """A folder renamed away (or a file replaced) mid-copy: retried once stable, never refused for it (a refusal
    would use a version number and keep the content out until it changes)."""
    _, built = demo
    src = tmp_path / "dir" / "a"
    shutil.copytree(built / "demo-lora", src)
    real = shutil.copyfile

    def vanish(a, b, *k, **kw):
        if Path(a).name == "adapter_model.safetensors":
            raise FileNotFoundError(2, "No such file or directory", str(a))
        return real(a, b, *k, **kw)
    monkeypatch.setattr(publish.shutil, "copyfile", vanish)
    with pytest.raises(publish.ChangedWhileCopying):
        publish.stage(src, tmp_path / "pub" / "a-v1", tmp_path / "dir", folder_signature(src))
    assert not (tmp_path / "pub" / "a-v1").exists()

