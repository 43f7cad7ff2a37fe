"""bench.compare.runs pieces that need no server: the bytes per adapter the scaling sweep reports."""
from __future__ import annotations

from bench.compare.runs import adapter_bytes


def test_adapter_bytes_is_the_median_over_distinct_folders_not_names(tmp_path):
    sizes = {"w0": 100, "w1": 300, "w2": 1000}
    for d, n in sizes.items():
        (tmp_path / d).mkdir()
        (tmp_path / d / "adapter_model.safetensors").write_bytes(b"x" * (n - 10))
        (tmp_path / d / "adapter_config.json").write_bytes(b"y" * 10)
        (tmp_path / d / "sub").mkdir()                                  # only files directly inside count
        (tmp_path / d / "sub" / "big").write_bytes(b"z" * 5000)
    names = tmp_path / "names"
    names.mkdir()
    folders = []
    for i in range(9):                                                  # 9 names, 7 of them on w2
        link = names / f"a{i}"
        link.symlink_to(tmp_path / ("w0" if i == 0 else "w1" if i == 1 else "w2"))
        folders.append(link)
    assert adapter_bytes(folders) == 300
