"""The store's books stay bounded under churn (a name removed long ago and not pinned is forgotten), and names the
scan itself refuses (case clash, bad characters, links outside DIR/) are handed to the watcher to log. No vLLM."""
from __future__ import annotations

import shutil

from hylorada_serve.store import AdapterStore

from .test_store import Clock, commit, write


def test_removed_names_are_forgotten_once_unpinned(tmp_path):
    clock = Clock()
    store = AdapterStore(tmp_path, stable_seconds=0.0, clock=clock, forget_seconds=60.0)
    forgotten = []
    store.on_forget = forgotten.append                   # metrics.forget in the server
    for i in range(50):                                  # 50 short-lived adapters
        write(tmp_path / f"a{i}")
        store.scan()
        commit(store, f"a{i}")
    ticket = store.admit()                               # a request admitted while a0 serves
    for i in range(50):
        shutil.rmtree(tmp_path / f"a{i}")
    _, gone = store.scan()
    for n in gone:
        store.remove(n)
    assert len(store.entries) == 50 and all(e.status == "removed" for e in store.entries.values())
    clock.t += 61
    store.scan()
    assert len(store.entries) == 50                      # every removed version is still pinned by the ticket
    store.release(ticket)
    assert len(store.collectable()) == 50
    store.scan()
    assert store.entries == {}                           # forgotten: GET /v1/adapters no longer lists them
    assert sorted(forgotten) == sorted(f"a{i}" for i in range(50))
    write(tmp_path / "a0", b"again")
    store.scan()
    v = commit(store, "a0")
    assert v.number == 1 and v.uid == 51                 # versions restart per name, uids never repeat


def test_recently_removed_names_stay_listed(tmp_path):
    clock = Clock()
    store = AdapterStore(tmp_path, stable_seconds=0.0, clock=clock, forget_seconds=60.0)
    write(tmp_path / "a")
    store.scan()
    commit(store, "a")
    shutil.rmtree(tmp_path / "a")
    store.remove(store.scan()[1][0])
    store.collectable()
    clock.t += 30
    store.scan()
    assert store.entries["a"].status == "removed"


def test_scan_refusals_are_reported_once(tmp_path):
    store = AdapterStore(tmp_path, stable_seconds=0.0, clock=Clock())
    write(tmp_path / "demo")
    store.scan()
    commit(store, "demo")                                # serving first: a later case twin never displaces it
    write(tmp_path / "Demo")
    write(tmp_path / "bad name")
    for _ in range(3):
        store.scan()
    got = dict(store.new_refusals)
    assert set(got) == {"Demo", "bad name"} and len(store.new_refusals) == 2
    assert "differs only by case" in got["Demo"] and store.entries["demo"].status == "ready"
