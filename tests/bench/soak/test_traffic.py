"""bench.soak.traffic.Soak.put_swap: DIR/swap-a is replaced whole (atomic_dir) from a spare folder, whether or
not it exists; nothing else is left in DIR/. No server."""
from __future__ import annotations

from types import SimpleNamespace

from bench.soak.traffic import SWAP, Soak


def test_put_swap_replaces_or_creates_swap_a(tmp_path):
    adapters, spare = tmp_path / "adapters", tmp_path / "spare"
    adapters.mkdir()
    for name in ("demo-lora", "demo-dora"):
        (spare / name).mkdir(parents=True)
        (spare / name / "w").write_text(name)
    soak = Soak("http://127.0.0.1:1", adapters, spare, SimpleNamespace())
    soak.put_swap("demo-dora")                       # absent -> created
    assert (adapters / SWAP / "w").read_text() == "demo-dora" and soak.swap_src == "demo-dora"
    soak.put_swap("demo-lora")                       # present -> replaced in one rename
    assert (adapters / SWAP / "w").read_text() == "demo-lora" and soak.swap_src == "demo-lora"
    assert [p.name for p in adapters.iterdir()] == [SWAP]
    assert [p.name for p in (adapters / SWAP).iterdir()] == ["w"]
