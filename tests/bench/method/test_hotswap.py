"""bench.method.hotswap.publish: each new version of DIR/bench-swap appears whole in one rename (atomic_dir),
with the `.ready` marker only in marker mode, and leaves no temporary or old folder behind. No server."""
from __future__ import annotations

from bench.method.hotswap import NAME, add_extra, publish


def test_publish_replaces_the_folder_whole_and_leaves_nothing_else(tmp_path):
    adapters, v1, v2 = tmp_path / "adapters", tmp_path / "v1", tmp_path / "v2"
    adapters.mkdir()
    for src, text in ((v1, "one"), (v2, "two")):
        (src / "sub").mkdir(parents=True)
        (src / "adapter_config.json").write_text(text)
        (src / "sub" / "f").write_text(text)
    publish(adapters, v1, marker=True)
    assert sorted(p.name for p in (adapters / NAME).iterdir()) == [".ready", "adapter_config.json", "sub"]
    publish(adapters, v2, marker=False)
    assert sorted(p.name for p in (adapters / NAME).iterdir()) == ["adapter_config.json", "sub"]
    assert (adapters / NAME / "sub" / "f").read_text() == "two"
    assert [p.name for p in adapters.iterdir()] == [NAME]
    assert (v1 / "adapter_config.json").read_text() == "one"        # the source is copied, never moved


def test_extra_folders_are_links_with_a_marker(tmp_path):
    src, adapters = tmp_path / "src", tmp_path / "adapters"
    src.mkdir()
    adapters.mkdir()
    (src / "adapter_config.json").write_text("{}")
    (src / "adapter_model.safetensors").write_bytes(b"w")
    add_extra(adapters, src, 3)
    assert sorted(p.name for p in adapters.iterdir()) == ["extra-0", "extra-1", "extra-2"]
    d = adapters / "extra-2"
    assert sorted(p.name for p in d.iterdir()) == [".ready", "adapter_config.json", "adapter_model.safetensors"]
    assert (d / "adapter_model.safetensors").stat().st_ino == (src / "adapter_model.safetensors").stat().st_ino
