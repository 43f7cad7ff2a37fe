"""publish.stage's private copies: a file already copied from the same source (same device, inode, size, mtime,
ctime) is hard-linked, never copied twice; a copy that went away is forgotten and made anew; a source rewritten
in place is copied again; a file written while it is copied leaves nothing remembered; and no copy is made that
would leave less than min_free bytes on the disk (refused with the numbers, nothing left behind). No vLLM."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from hylorada_serve import publish
from hylorada_serve.publish import AdapterRefused, ChangedWhileCopying, Copies, NoRoom, stage

FILES = {"adapter_config.json": b'{"r": 4}', "adapter_model.safetensors": b"w" * 4096}


@pytest.fixture()
def root(tmp_path):
    r = tmp_path / "adapters"
    (r / "set0").mkdir(parents=True)
    for name, data in FILES.items():
        (r / "set0" / name).write_bytes(data)
    for alias in ("a", "b", "c"):                      # three names, one weight set (hard links, as in DIR/ of
        (r / alias).mkdir()                            # tests/serve/test_many_adapters.py)
        for name in FILES:
            os.link(r / "set0" / name, r / alias / name)
    return r


def inodes(d: Path) -> dict[str, int]:
    return {f.name: f.stat().st_ino for f in d.iterdir()}


def contents(d: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in d.iterdir()}


def test_names_sharing_files_share_one_private_copy(root, tmp_path):
    copies = Copies()
    stage(root / "a", tmp_path / "pub-a", root, None, copies)
    stage(root / "b", tmp_path / "pub-b", root, None, copies)
    assert contents(tmp_path / "pub-b") == FILES
    assert inodes(tmp_path / "pub-b") == inodes(tmp_path / "pub-a") != inodes(root / "set0")   # private, shared
    assert copies.linked == len(FILES)
    stage(root / "c", tmp_path / "pub-c", root, None)                    # without Copies: a copy of its own
    assert set(inodes(tmp_path / "pub-c").values()).isdisjoint(inodes(tmp_path / "pub-a").values())


def test_a_copy_that_went_away_is_made_anew(root, tmp_path):
    copies = Copies()
    stage(root / "a", tmp_path / "pub-a", root, None, copies)
    shutil.rmtree(tmp_path / "pub-a")                                    # its version was freed
    stage(root / "b", tmp_path / "pub-b", root, None, copies)
    assert contents(tmp_path / "pub-b") == FILES and copies.linked == 0
    stage(root / "c", tmp_path / "pub-c", root, None, copies)            # the new copy is the one linked now
    assert inodes(tmp_path / "pub-c") == inodes(tmp_path / "pub-b") and copies.linked == len(FILES)


def test_a_source_rewritten_in_place_is_copied_again(root, tmp_path):
    copies = Copies()
    stage(root / "a", tmp_path / "pub-a", root, None, copies)
    with open(root / "set0" / "adapter_model.safetensors", "r+b") as fh:   # same inode, same size, new bytes
        fh.write(b"X" * 16)
    stage(root / "b", tmp_path / "pub-b", root, None, copies)
    got = contents(tmp_path / "pub-b")
    assert got["adapter_model.safetensors"].startswith(b"X" * 16) and copies.linked == 1   # only the config linked
    assert contents(tmp_path / "pub-a") == FILES                         # the first version kept its bytes


def test_a_file_written_while_copied_is_not_remembered(root, tmp_path, monkeypatch):
    copies, real_copy = Copies(), shutil.copyfile

    def copy_then_write(src, dst):
        real_copy(src, dst)
        with open(src, "ab") as fh:
            fh.write(b"more")
    monkeypatch.setattr(publish.shutil, "copyfile", copy_then_write)
    with pytest.raises(ChangedWhileCopying):
        stage(root / "a", tmp_path / "pub-a", root, None, copies)
    assert not (tmp_path / "pub-a").exists()
    monkeypatch.setattr(publish.shutil, "copyfile", real_copy)
    stage(root / "b", tmp_path / "pub-b", root, None, copies)
    assert copies.linked == 0 and (tmp_path / "pub-b" / "adapter_model.safetensors").read_bytes().endswith(b"more")


def test_no_copy_leaves_less_than_min_free_on_the_disk(root, tmp_path, monkeypatch):
    need = sum(len(v) for v in FILES.values())
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(NoRoom, match=rf"no room for its private copy: {need} bytes needed, \d+ free") as e:
        stage(root / "a", tmp_path / "pub-a", root, None, Copies(), min_free=free)
    assert "--min-free-disk-mb" in str(e.value) and str(root / "a") in str(e.value)
    assert not (tmp_path / "pub-a").exists()                             # nothing left behind
    copies = Copies()
    stage(root / "a", tmp_path / "pub-a", root, None, copies, min_free=free - 2 * need)   # room: copied
    stage(root / "b", tmp_path / "pub-b", root, None, copies, min_free=free * 2)          # links need no room
    assert copies.linked == len(FILES)


def test_copies_prune_what_went_away(root, tmp_path, monkeypatch):
    monkeypatch.setattr(Copies, "PRUNE_AT", 2)
    copies = Copies()
    stage(root / "a", tmp_path / "pub-a", root, None, copies)            # 2 entries
    shutil.rmtree(tmp_path / "pub-a")
    (root / "d").mkdir()
    (root / "d" / "adapter_model.safetensors").write_bytes(b"d" * 10)
    stage(root / "d", tmp_path / "pub-d", root, None, copies)            # at the bound: the gone ones dropped
    assert list(copies._by_source.values()) == [tmp_path / "pub-d" / "adapter_model.safetensors"]
