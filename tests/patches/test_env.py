"""env.py: the patches' environment variables, read in one place; their readers' defaults and refusals. No engine."""
from __future__ import annotations

import pytest

from hylorada_patches.env import Settings
from hylorada_patches.lora_path import default_path


def test_settings_from_an_environment():
    assert Settings.read({}) == Settings(attention="", lora_path=None, allow_unverified_vllm=False)
    s = Settings.read({"HYLORADA_ATTENTION": ' {"mode": "s2"} ', "HYLORADA_LORA_PATH": "vllm",
                       "HYLORADA_ALLOW_UNVERIFIED_VLLM": "1"})
    assert s == Settings(attention='{"mode": "s2"}', lora_path="vllm", allow_unverified_vllm=True)
    assert not Settings.read({"HYLORADA_ALLOW_UNVERIFIED_VLLM": "yes"}).allow_unverified_vllm   # only "1"


def test_default_lora_path():
    assert default_path(True, Settings()) == "grouped" and default_path(False, Settings()) == "vllm"
    assert default_path(True, Settings(lora_path="vllm")) == "vllm"
    for bad in ("", "punica"):                       # set but empty is a bad value, not the default
        with pytest.raises(ValueError, match="HYLORADA_LORA_PATH must be one of"):
            default_path(True, Settings(lora_path=bad))


def test_cpu_lora_byte_budget():
    assert Settings.read({}).cpu_lora_bytes == 0
    assert Settings.read({"HYLORADA_CPU_LORA_BYTES": " 419430 "}).cpu_lora_bytes == 419430
    with pytest.raises(ValueError, match="HYLORADA_CPU_LORA_BYTES must be a whole number of bytes"):
        Settings.read({"HYLORADA_CPU_LORA_BYTES": "0.4MB"})


def test_checked_key():
    assert Settings.read({}).checked_key == b""
    assert Settings.read({"HYLORADA_CHECKED_KEY": "ab" * 32}).checked_key == bytes([0xAB]) * 32
    with pytest.raises(ValueError, match="at least 32 hex digits"):
        Settings.read({"HYLORADA_CHECKED_KEY": "abcd"})
    with pytest.raises(ValueError, match="not hex"):
        Settings.read({"HYLORADA_CHECKED_KEY": "zz" * 32})
