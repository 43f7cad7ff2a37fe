"""The format tests' shared adapter: a valid converted DoRA folder (it has c vectors, so all four files exist),
built once, and a private copy of it per test to break."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def good_served(tiny_base, tmp_path_factory):
    from hylorada.commands.convert_peft import convert_peft
    from tests.helpers import make_peft
    d = tmp_path_factory.mktemp("good")
    make_peft(tiny_base, d / "peft", use_dora=True)
    return convert_peft(d / "peft", d / "served", tiny_base)


@pytest.fixture()
def served(good_served, tmp_path):
    return Path(shutil.copytree(good_served, tmp_path / "served"))


@pytest.fixture()
def base_cfg(tiny_base):
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(tiny_base)
