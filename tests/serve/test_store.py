"""AdapterStore and HotSwapper bookkeeping without vLLM (fast): completion rule, versions, admission pinning,
refusals, names, and the watcher's stages against a fake engine."""
from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from hylorada_serve import publish
from hylorada_serve.store import AdapterStore, Version
from hylorada_serve.watcher import HotSwapper


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def write(folder: Path, payload: bytes = b"w", marker: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(payload)
    if marker:
        time.sleep(0.01)
        (folder / ".ready").write_text("")
    return folder


def commit(store: AdapterStore, name: str) -> Version:
    number, uid, sig = store.begin_load(name)
    v = Version(name=name, number=number, uid=uid, path=f"/pub/{name}-{number}", signature=sig)
    store.commit(v)
    return v


@pytest.fixture
def env(tmp_path):
    clock = Clock()
    return tmp_path, clock, AdapterStore(tmp_path, stable_seconds=2.0, clock=clock)


def test_folder_loads_only_after_it_is_stable(env):
    root, clock, store = env
    write(root / "a")
    assert store.scan() == ([], [])                     # first sight: waiting
    assert store.entries["a"].status == "waiting"
    clock.t += 1.0
    (root / "a" / "adapter_model.safetensors").write_bytes(b"more")   # still being written
    assert store.scan() == ([], [])
    clock.t += 1.5
    assert store.scan() == ([], [])                     # 1.5 s since the last change
    clock.t += 0.6
    assert store.scan() == (["a"], [])


def test_ready_marker_written_last_completes_at_once(env):
    root, clock, store = env
    write(root / "a", marker=True)
    assert store.scan() == (["a"], [])
    write(root / "b")                                   # marker older than a file: not trusted
    (root / "b" / ".ready").write_text("")
    os.utime(root / "b" / ".ready", ns=(1, 1))
    assert store.scan()[0] == ["a"]


def test_versions_pinning_and_collection(env):
    root, clock, store = env
    write(root / "a", marker=True)
    store.scan()
    v1 = commit(store, "a")
    t_old = store.admit()                               # a request admitted on v1
    write(root / "a", b"changed", marker=True)
    assert store.scan() == (["a"], [])
    v2 = commit(store, "a")
    assert (v1.number, v2.number) == (1, 2) and v1.uid != v2.uid and v2.engine_name == "a@v2"
    assert t_old.mapping["a"] is v1 and store.admit().mapping["a"] is v2
    assert store.collectable() == []                    # t_old may still resolve v1
    store.release(t_old)
    assert store.collectable() == [v1]
    assert store.collectable() == []


def test_removed_folder_is_gone_for_new_tickets_only(env):
    root, clock, store = env
    write(root / "a", marker=True)
    store.scan()
    v1 = commit(store, "a")
    t = store.admit()
    for f in (root / "a").iterdir():
        f.unlink()
    (root / "a").rmdir()
    assert store.scan() == ([], ["a"])
    store.remove("a")
    assert "a" not in store.admit().mapping and t.mapping["a"] is v1
    write(root / "a", b"again", marker=True)            # re-added: a new version number
    store.scan()
    assert commit(store, "a").number == 2


def test_refused_content_not_retried_and_old_version_keeps_serving(env):
    root, clock, store = env
    write(root / "a", marker=True)
    store.scan()
    v1 = commit(store, "a")
    write(root / "a", b"bad", marker=True)
    assert store.scan()[0] == ["a"]
    _, _, sig = store.begin_load("a")
    store.refuse("a", sig, "bad tensor")
    assert store.entries["a"].status == "ready" and store.serving()["a"] is v1
    assert store.scan()[0] == []                        # the same bad content is not retried
    write(root / "a", b"fixed", marker=True)
    assert store.scan()[0] == ["a"]


def test_a_transient_refusal_is_retried_after_its_delay_and_counted_once(env):
    root, clock, store = env
    write(root / "a", marker=True)
    assert store.scan()[0] == ["a"]
    _, _, sig = store.begin_load("a")
    assert store.refuse("a", sig, "no room", retry_s=10.0) is True
    assert store.scan()[0] == []                        # not before its delay
    clock.t += 9.9
    assert store.scan()[0] == []
    clock.t += 0.2
    assert store.scan()[0] == ["a"]                     # the same content, tried again
    _, _, sig = store.begin_load("a")
    assert store.refuse("a", sig, "no room", retry_s=10.0) is False     # the same refusal again: no news
    assert store.entries["a"].events["refused"] == 1 and store.entries["a"].status == "refused"
    clock.t += 10.1
    assert store.scan()[0] == ["a"]
    _, _, sig = store.begin_load("a")
    assert store.refuse("a", sig, "bad tensor") is True                 # a lasting refusal: news, never retried
    assert store.entries["a"].events["refused"] == 2
    clock.t += 100
    assert store.scan()[0] == []


def test_waiting_on_time_is_what_only_time_moves_on(env):
    root, clock, store = env
    assert not store.waiting_on_time()
    write(root / "a")                                   # no marker: complete once unchanged stable_seconds
    store.scan()
    assert store.waiting_on_time()
    clock.t += 2.5
    assert store.scan()[0] == ["a"]
    store.begin_load("a")
    assert not store.waiting_on_time()                  # loading: its verdict comes from the job, not the clock
    commit(store, "a")
    assert not store.waiting_on_time()                  # serving what is on disk
    write(root / "b", marker=True)
    store.scan()
    _, _, sig = store.begin_load("b")
    store.refuse("b", sig, "bad tensor")
    assert not store.waiting_on_time()                  # refused for good: only a change moves it
    store.scan()
    _, _, sig = store.begin_load("b")
    store.refuse("b", sig, "no room", retry_s=10.0)
    assert store.waiting_on_time()                      # a retry is due with time
    write(root / "a", b"changed")                       # a rewrite of a serving folder, no marker
    store.scan()
    assert store.waiting_on_time()


def test_a_partial_look_changes_only_the_names_it_covers(env):
    from hylorada_serve.scan import observe
    root, clock, store = env
    for n in ("a", "b", "Keep"):
        write(root / n, marker=True)
    store.scan()
    for n in ("a", "b", "Keep"):
        commit(store, n)
    shutil.rmtree(root / "a")                           # gone, but not in the look: still served
    write(root / "c", marker=True)
    write(root / "keep", marker=True)                   # a case twin of a name the books hold present
    only = ["c", "keep"]
    seen = observe(root, only)
    assert sorted(s.name for s in seen) == ["c", "keep"]
    to_load, gone = store.apply(seen, only)
    assert (to_load, gone) == (["c"], []) and "a" in store.serving()
    assert store.entries["keep"].status == "refused" and "case" in store.entries["keep"].reason
    to_load, gone = store.apply(observe(root, ["a", "b"]), ["a", "b"])
    assert (to_load, gone) == ([], ["a"])               # a named folder not seen is gone; b unchanged
    assert observe(root / "missing", ["a"]) is None     # DIR/ itself gone: no look at all


def test_names_hidden_case_and_symlinks(env, tmp_path_factory):
    root, clock, store = env
    write(root / "Good", marker=True)
    write(root / "good", marker=True)
    write(root / ".tmp-partial", marker=True)
    write(root / "bad name", marker=True)
    outside = write(tmp_path_factory.mktemp("outside") / "x", marker=True)
    (root / "link").symlink_to(outside)
    to_load, _ = store.scan()
    assert to_load == ["Good"]
    st = {s["name"]: s for s in store.status()}
    assert ".tmp-partial" not in st
    assert st["good"]["status"] == "refused" and "case" in st["good"]["reason"]
    assert st["bad name"]["status"] == "refused"
    assert st["link"]["status"] == "refused" and "outside" in st["link"]["reason"]


def test_missing_root_removes_nothing(env):
    root, clock, store = env
    write(root / "a", marker=True)
    store.scan()
    commit(store, "a")
    store.root = root / "unmounted"
    assert store.scan() == ([], []) and "a" in store.serving()


# ---- the watcher against a fake engine -------------------------------------------------------------------

class FakeEngine:
    def __init__(self):
        self.added, self.removed, self.fail = [], [], False

    async def add_lora(self, req):
        if self.fail:
            raise ValueError("Loading lora a failed: unexpected key\nmore")
        self.added.append(req)

    async def remove_lora(self, uid):
        self.removed.append(uid)


def test_watcher_stages_loads_refuses_and_frees(tmp_path, monkeypatch):
    root, pub = tmp_path / "dir", tmp_path / "pub"
    store = AdapterStore(root, stable_seconds=0.0)
    engine = FakeEngine()
    monkeypatch.setattr(publish, "check", lambda path, src, cfg, rank, **kw: publish.AdapterInfo("lora", 8, 100))
    sw = HotSwapper(store, engine, pub, make_request=lambda n, uid, p: (n, uid, p))

    async def go():
        write(root / "a", b"one")
        (root / "a" / "adapter_model.bin").write_bytes(b"pickle")        # never copied
        await sw.step()
        v1 = store.serving()["a"]
        assert engine.added == [("a@v1", v1.uid, v1.path)]
        assert sorted(os.listdir(v1.path)) == ["adapter_config.json", "adapter_model.safetensors"]
        write(root / "a", b"two")
        engine.fail = True
        await sw.step()                                   # engine refuses v2: v1 keeps serving
        assert store.serving()["a"] is v1 and "engine refused" in store.entries["a"].reason
        write(root / "a", b"three")
        engine.fail = False
        await sw.step()
        v2 = store.serving()["a"]                         # the refused load took no number: clients saw v1, v2
        assert v2.number == 2 and engine.removed == [v1.uid] and not Path(v1.path).exists()
        assert engine.added[-1] == ("a@v2", v2.uid, v2.path) and v2.uid == 3     # but a uid of its own
        st = await sw.unload("a")
        assert st["status"] == "unloaded" and "a" not in store.serving()
        await sw.step()
        assert "a" not in store.serving()                 # held until an explicit load
        st = await sw.load("a", force=True)
        assert st["status"] == "ready" and st["version"] == 3
    asyncio.run(go())


def test_a_folder_refused_for_want_of_disk_loads_once_there_is_room(tmp_path, monkeypatch):
    root, pub, clock = tmp_path / "dir", tmp_path / "pub", Clock()
    store = AdapterStore(root, stable_seconds=0.0, clock=clock)
    engine = FakeEngine()
    monkeypatch.setattr(publish, "check", lambda path, src, cfg, rank, **kw: publish.AdapterInfo("lora", 8, 100))
    sw = HotSwapper(store, engine, pub, make_request=lambda n, uid, p: (n, uid, p), min_free_disk=1 << 62)
    staged = []
    real_stage = publish.stage
    monkeypatch.setattr(publish, "stage", lambda *a, **kw: (staged.append(a[0]), real_stage(*a, **kw))[1])
    events = []
    sw.on_event = lambda name, event: events.append(event)

    async def go():
        write(root / "a", b"one")
        await sw.step()
        e = store.entries["a"]
        assert e.status == "refused" and "no room for its private copy" in e.reason and "a" not in store.serving()
        await sw.step()                                   # inside the delay: not even looked at again
        assert len(staged) == 1
        clock.t += publish.NoRoom.RETRY_S + 0.1
        await sw.step()                                   # still no room: tried, refused quietly
        assert len(staged) == 2 and e.events["refused"] == 1 and events == ["refused"]
        sw.min_free_disk = 0                              # disk freed
        await sw.step()
        assert "a" not in store.serving()                 # the delay still runs
        clock.t += publish.NoRoom.RETRY_S + 0.1
        await sw.step()
        assert store.serving()["a"].number == 1 and engine.added and events == ["refused", "loaded"]
        assert not [p for p in pub.iterdir() if p.name != store.serving()["a"].path.rsplit("/", 1)[1]]
    asyncio.run(go())


def test_pickle_only_and_outside_symlink_are_refused(tmp_path):
    root = tmp_path / "dir"
    a = root / "a"
    a.mkdir(parents=True)
    (a / "adapter_config.json").write_text("{}")
    (a / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    publish.stage(a, tmp_path / "pub-a", root, None)
    with pytest.raises(publish.AdapterRefused, match="never loaded"):
        publish.check(tmp_path / "pub-a", a, None, None)
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"x")
    b = root / "b"
    b.mkdir()
    (b / "adapter_model.safetensors").symlink_to(secret)
    with pytest.raises(publish.AdapterRefused, match="outside"):
        publish.stage(b, tmp_path / "pub-b", root, None)
    assert not (tmp_path / "pub-b").exists()


def test_longest_context_of_the_start_up_adapters(tmp_path):
    import json
    from types import SimpleNamespace
    base = SimpleNamespace(max_position_embeddings=4096)
    lin = {"rope_type": "linear", "factor": 4.0, "original_max_position_embeddings": 4096}
    yarn = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 1000}
    dyn = {"rope_type": "dynamic", "factor": 8.0, "original_max_position_embeddings": 4096}
    for name, rs in (("c", None), ("d", {"rope_type": "default"}), ("y", yarn), ("n", dyn)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "hylorada.json").write_text(json.dumps({"format_version": 1, "kind": "hylorada", "rope_scaling": rs}))
    (tmp_path / "plain").mkdir()                       # a PEFT folder: no hylorada.json, no scaling
    assert publish.longest_context(tmp_path, base) == (4096, 0)     # YaRN x2 of 1000 < 4096; dynamic: unscaled
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "hylorada.json").write_text(json.dumps({"format_version": 1, "kind": "hylorada", "rope_scaling": lin}))
    assert publish.longest_context(tmp_path, base) == (16384, 1)
    (tmp_path / ".hidden-b").mkdir()                   # not an adapter name: no say
    (tmp_path / ".hidden-b" / "hylorada.json").write_text(json.dumps({"format_version": 1, "kind": "hylorada",
                                                                      "rope_scaling": dict(lin, factor=16.0)}))
    assert publish.longest_context(tmp_path, base) == (16384, 1)


def test_a_copy_that_passes_is_stamped_for_the_engine_and_a_refused_one_is_not(tmp_path, tiny_base):
    """publish.check with the server's stamp key writes a checked stamp that verifies with the engine worker's own
    reader (hylorada_patches.loading.stamped, the same base config and rank); no key, no stamp; a refused copy
    never gets one."""
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig

    from hylorada.commands.convert_peft import convert_peft
    from hylorada.format.stamp import STAMP
    from hylorada_patches.loading import stamped
    from tests.helpers import make_peft
    cfg, key = AutoConfig.from_pretrained(tiny_base), os.urandom(32)
    make_peft(tiny_base, tmp_path / "peft")
    root = tmp_path / "dir"
    convert_peft(tmp_path / "peft", root / "a", tiny_base)
    publish.stage(root / "a", tmp_path / "pub-a", root, None)
    publish.check(tmp_path / "pub-a", root / "a", cfg, 8, base_dir=str(tiny_base), stamp_key=key)
    assert stamped(str(tmp_path / "pub-a"), cfg, 8, key)
    publish.stage(root / "a", tmp_path / "pub-a2", root, None)
    publish.check(tmp_path / "pub-a2", root / "a", cfg, 8, base_dir=str(tiny_base))
    assert not (tmp_path / "pub-a2" / STAMP).exists()
    shutil.copytree(root / "a", root / "bad")
    w = root / "bad" / "adapter_model.safetensors"
    t = load_file(str(w))
    next(iter(t.values())).view(-1)[0] = float("inf")
    save_file(t, str(w))
    publish.stage(root / "bad", tmp_path / "pub-bad", root, None)
    with pytest.raises(publish.AdapterRefused, match="NaN or Inf"):
        publish.check(tmp_path / "pub-bad", root / "bad", cfg, 8, base_dir=str(tiny_base), stamp_key=key)
    assert not (tmp_path / "pub-bad" / STAMP).exists()
