"""ServeConfig (hylorada_serve/config.py): documented defaults, frozen, and one error that lists every bad value."""
from __future__ import annotations

import dataclasses
import math

import pytest

from hylorada_serve.config import ConfigError, ServeConfig, flag_given

OK = {"base": "/models/tiny", "adapters": "/srv/adapters"}


def test_defaults():
    c = ServeConfig(**OK)
    assert (c.host, c.port, c.max_loras, c.max_cpu_loras, c.max_lora_rank) == ("127.0.0.1", 8000, 4, None, 16)
    assert (c.stable_seconds, c.poll_interval, c.rescan_interval, c.max_body_mb) == (2.0, 0.5, 5.0, 16.0)
    assert c.kv_cache_memory_bytes == 1 << 30 and c.shutdown_timeout == 10
    assert c.vllm_args == () and c.api_key is None and c.admin_key is None and not c.demo
    assert c.served_name == "tiny" and c.max_body_bytes == 16 << 20
    assert ServeConfig(**OK, served_model_name="base").served_name == "base"


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ServeConfig(**OK).poll_interval = 1.0


def test_keys_stay_out_of_repr():
    assert "s3cret" not in repr(ServeConfig(**OK, api_key="s3cret", admin_key="s3cret"))


def test_every_bad_value_in_one_error():
    with pytest.raises(ConfigError) as ei:
        ServeConfig(host="", port=70000, max_body_mb=-1.0, max_loras=0, max_cpu_loras=-3, max_lora_rank=0,
                    stable_seconds=0.0, poll_interval=-1.0, kv_cache_memory_bytes=0, shutdown_timeout=-1,
                    vllm_args=("--enable-lora", "--lora-modules=a=/x"))
    flags = ["--base", "--adapters", "--host", "--port", "--max-body-mb", "--max-loras", "--max-cpu-loras",
             "--max-lora-rank", "--stable-seconds", "--poll-interval", "kv_cache_memory_bytes", "shutdown_timeout",
             "--lora-modules", "--enable-lora"]
    assert len(ei.value.problems) == len(flags), ei.value.problems
    for flag, line in zip(flags, ei.value.problems):
        assert line.startswith(flag + ":"), (flag, line)
        assert line in str(ei.value)


@pytest.mark.parametrize("field", ["poll_interval", "rescan_interval", "stable_seconds"])
@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, math.nan, math.inf, "1", True, None])
def test_poll_interval_and_stable_seconds_must_be_positive_seconds(field, value):
    with pytest.raises(ConfigError) as ei:
        ServeConfig(**OK, **{field: value})
    assert ei.value.problems == (f"--{field.replace('_', '-')}: must be a positive number of seconds "
                                 f"(got {value!r})",)


@pytest.mark.parametrize("field", ["poll_interval", "rescan_interval", "stable_seconds"])
def test_small_positive_seconds_are_fine(field):
    assert getattr(ServeConfig(**OK, **{field: 0.01}), field) == 0.01
    assert getattr(ServeConfig(**OK, **{field: 3}), field) == 3


def test_boundaries_that_are_allowed():
    c = ServeConfig(**OK, port=0, max_body_mb=0, max_loras=2, max_cpu_loras=2, shutdown_timeout=0)
    assert c.max_body_bytes == 0
    with pytest.raises(ConfigError, match="--max-cpu-loras"):
        ServeConfig(**OK, max_loras=4, max_cpu_loras=3)


def test_demo_needs_no_base_or_adapters():
    assert ServeConfig(demo=True).demo
    with pytest.raises(ConfigError) as ei:
        ServeConfig(base="/models/tiny")
    assert ei.value.problems == ("--adapters: required (or --demo)",)


def test_replace_validates_again():
    with pytest.raises(ConfigError, match="--poll-interval"):
        dataclasses.replace(ServeConfig(**OK), poll_interval=0)


def test_vllm_args_must_be_a_tuple_of_strings():
    with pytest.raises(ConfigError, match="vllm_args"):
        ServeConfig(**OK, vllm_args=["--dtype", "float32"])


def test_flag_given_forms():
    assert flag_given(("--dtype", "float32", "--gpu-memory-utilization", "0.5"), "--gpu-memory-utilization")
    assert flag_given(("--gpu_memory_utilization=0.5",), "--gpu-memory-utilization")
    assert not flag_given(("--dtype", "--gpu-memory-utilization-x"), "--gpu-memory-utilization")
    assert not flag_given(("--model", "gpu-memory-utilization"), "--gpu-memory-utilization")


def test_demo_base_is_checked_and_dispatched(monkeypatch, tmp_path):
    from hylorada_serve import demo
    with pytest.raises(ConfigError, match="--demo-base"):
        ServeConfig(demo=True, demo_base="llama-70b")
    called = []
    monkeypatch.setattr(demo, "prepare", lambda d: called.append(("tiny", d)) or (tmp_path / "b", tmp_path / "a"))
    monkeypatch.setattr(demo, "prepare_real", lambda d: called.append(("real", d)) or (tmp_path / "B", tmp_path / "A"))
    c = demo.demo_config(ServeConfig(demo=True, demo_base="tiny", cache_dir="/c"))
    assert called == [("tiny", "/c")] and c.base == str(tmp_path / "b") and c.vllm_args[:2] == ("--dtype", "float32")
    demo.demo_config(ServeConfig(demo=True))
    assert called[-1] == ("real", None)


@pytest.mark.parametrize("value", [-1, 1.5, "1", True, None])
def test_min_free_disk_mb_is_a_whole_number_of_mib(value):
    assert ServeConfig(**OK).min_free_disk_mb == 1024 and ServeConfig(**OK, min_free_disk_mb=0).min_free_disk_mb == 0
    with pytest.raises(ConfigError) as ei:
        ServeConfig(**OK, min_free_disk_mb=value)
    assert ei.value.problems == (f"--min-free-disk-mb: must be an integer >= 0 (got {value!r})",)
