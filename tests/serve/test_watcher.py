"""HotSwapper.run (hylorada_serve/watcher.py) wakes on file events, and the polling pass stays the safety net
(no vLLM: a fake engine, the real reader and demo adapters):

  * with events, a folder published with a `.ready` marker is loaded long before the next poll (30 s here);
  * with events off (`--no-watch-events`, or a filesystem without them), the polling pass alone converges;
  * DIR/ removed and created again (an unmount, a re-provisioned volume): events come back and a new folder is
    loaded without waiting for the poll;
  * with events working and nothing waiting on time, the full scan runs every `rescan` seconds, not every poll
    interval, and a folder completed by the stable rule (no marker: no event tells when it is done) still loads;
  * a pass woken by events looks only at the entries of DIR/ they named (a hot-swap among thousands of folders
    does not wait for a scan of all of them), and a removal is seen the same way.
"""
from __future__ import annotations

import asyncio
import shutil
import time

import pytest

import hylorada_serve.watcher as watcher_mod
from hylorada.format.atomic import atomic_dir

from .test_store_hardening import swapper


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from hylorada_serve.demo import prepare
    return prepare(tmp_path_factory.mktemp("watcher-demo"))


def publish(src, dst) -> None:
    with atomic_dir(dst, replace=True) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        (tmp / ".ready").write_text("")


async def until_ready(store, name: str, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if name in store.serving():
            return time.monotonic() - t0
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} not serving after {timeout} s: {store.status()}")


def run_with(sw, interval: float, events: bool, body, rescan: float = 5.0):
    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(sw.run(stop, interval, events, rescan))
        try:
            await asyncio.sleep(0.5)                     # the first pass and the listener are up
            return await body()
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    return asyncio.run(go())


def test_a_published_folder_is_loaded_on_its_event_not_the_next_poll(tmp_path, demo):
    _, built = demo
    store, sw, _, root, _ = swapper(tmp_path)

    async def body():
        publish(built / "demo-lora", root / "a")
        return await until_ready(store, "a", 10)
    assert run_with(sw, 30.0, True, body) < 5                # the poll would come after 30 s


def test_polling_alone_converges(tmp_path, demo):
    _, built = demo
    store, sw, _, root, _ = swapper(tmp_path)

    async def body():
        publish(built / "demo-dora", root / "b")
        await until_ready(store, "b", 10)
        shutil.rmtree(root / "b")
        t0 = time.monotonic()
        while "b" in store.serving():
            assert time.monotonic() - t0 < 10
            await asyncio.sleep(0.05)
    run_with(sw, 0.2, False, body)


def test_events_come_back_after_the_folder_is_replaced(tmp_path, demo, monkeypatch):
    _, built = demo
    monkeypatch.setattr(watcher_mod, "EVENT_RETRY_S", 0.2)
    store, sw, _, root, _ = swapper(tmp_path)

    async def body():
        shutil.rmtree(root)
        await asyncio.sleep(1.0)                          # the listener notices and retries
        root.mkdir()
        await asyncio.sleep(1.0)                          # watching the new folder
        publish(built / "demo-lora", root / "c")
        return await until_ready(store, "c", 20)
    assert run_with(sw, 30.0, True, body) < 5


def test_with_events_the_full_scan_waits_for_the_rescan_unless_a_folder_waits_on_time(tmp_path, demo):
    _, built = demo
    store, sw, _, root, _ = swapper(tmp_path)
    store.stable_seconds = 0.5

    async def body():
        t0 = time.monotonic()
        while not sw.events_live:
            assert time.monotonic() - t0 < 10, "file events never came up"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        before = sw.passes
        await asyncio.sleep(1.5)
        assert sw.passes - before <= 1                    # quiet: no pass every 0.05 s (30 would run)
        publish(built / "demo-lora", root / "a")
        assert await until_ready(store, "a", 10) < 5      # on its event
        shutil.copytree(built / "demo-dora", root / "b")  # no marker: complete only once unchanged 0.5 s
        took = await until_ready(store, "b", 20)
        assert 0.4 < took < 5                             # the polls resumed while it waited; the rescan is 30 s
        before = sw.passes
        await asyncio.sleep(1.5)
        assert sw.passes - before <= 1                    # quiet again
    run_with(sw, 0.05, True, body, rescan=30.0)


def test_without_events_every_poll_is_a_full_scan(tmp_path):
    store, sw, _, root, _ = swapper(tmp_path)

    async def body():
        before = sw.passes
        await asyncio.sleep(1.0)
        assert sw.passes - before >= 5 and not sw.events_live
    run_with(sw, 0.05, False, body, rescan=30.0)


def test_an_event_pass_looks_only_at_the_folders_the_events_named(tmp_path, demo, monkeypatch):
    _, built = demo
    store, sw, _, root, _ = swapper(tmp_path)
    for i in range(20):
        publish(built / "demo-lora", root / f"old{i}")
    looks = []
    real = watcher_mod.observe
    monkeypatch.setattr(watcher_mod, "observe", lambda r, names=None: (looks.append(names), real(r, names))[1])

    async def body():
        t0 = time.monotonic()
        while not (sw.events_live and len(store.serving()) == 20):
            assert time.monotonic() - t0 < 20, store.status()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        looks.clear()
        publish(built / "demo-dora", root / "new")
        assert await until_ready(store, "new", 10) < 5
        assert looks and all(n is not None and "new" in n and len(n) <= 3 for n in looks), looks
        looks.clear()
        shutil.rmtree(root / "old3")
        t0 = time.monotonic()
        while "old3" in store.serving():
            assert time.monotonic() - t0 < 5, "removal waited for the rescan"
            await asyncio.sleep(0.05)
        assert looks and all(n is not None and len(n) <= 3 for n in looks), looks
        assert len(store.serving()) == 20 and sw.partial_passes >= 2
    run_with(sw, 30.0, True, body, rescan=30.0)


def test_a_changed_path_names_its_entry_of_dir(tmp_path):
    root = str(tmp_path)
    assert watcher_mod._entry(f"{root}/a/adapter_model.safetensors", root) == "a"
    assert watcher_mod._entry(f"{root}/a", root) == "a"
    assert watcher_mod._entry(f"{root}/.a.tmp-1/x/y", root) == ".a.tmp-1"
    assert watcher_mod._entry(root, root) is None                      # DIR/ itself: a full pass
    assert watcher_mod._entry(str(tmp_path.parent / "elsewhere" / "a"), root) is None


def test_a_link_to_a_changed_folder_changes_with_it(tmp_path, demo):
    _, built = demo
    store, sw, _, root, _ = swapper(tmp_path)
    publish(built / "demo-lora", root / "a")
    (root / "b").symlink_to("a")                          # an alias inside DIR/: a change to a names only 'a'

    async def body():
        t0 = time.monotonic()
        while not (sw.events_live and {"a", "b"} <= store.serving().keys()):
            assert time.monotonic() - t0 < 20, store.status()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        publish(built / "demo-dora", root / "a")
        t0 = time.monotonic()
        while store.serving()["b"].number < 2:
            assert time.monotonic() - t0 < 5, "the alias waited for the rescan"
            await asyncio.sleep(0.05)
        assert store.serving()["a"].number == 2 and store.serving()["b"].kind == store.serving()["a"].kind
    run_with(sw, 30.0, True, body, rescan=30.0)
