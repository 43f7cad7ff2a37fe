"""hylorada-serve's command line (hylorada_serve/cli.py): argv → ServeConfig, vLLM's options passed through, every
bad value reported at once with exit code 2, and a --help that explains every option. No engine."""
from __future__ import annotations

import pytest

from hylorada_serve.cli import build_parser, parse_args
from hylorada_serve.config import ServeConfig


def test_defaults_are_serve_configs(monkeypatch):
    monkeypatch.delenv("HYLORADA_API_KEY", raising=False)
    monkeypatch.delenv("HYLORADA_ADMIN_KEY", raising=False)
    assert parse_args(["--base", "b", "--adapters", "d"]) == ServeConfig(base="b", adapters="d")


def test_options_and_pass_through():
    c = parse_args(["--base", "b", "--adapters", "d", "--port", "9001", "--poll-interval", "0.2", "--stable-seconds",
                    "1", "--max-cpu-loras", "8", "--dtype", "float32", "--max-model-len=512", "--enforce-eager"])
    assert (c.port, c.poll_interval, c.stable_seconds, c.max_cpu_loras) == (9001, 0.2, 1.0, 8)
    assert parse_args(["--base", "b", "--adapters", "d", "--min-free-disk-mb", "64"]).min_free_disk_mb == 64
    assert parse_args(["--base", "b", "--adapters", "d", "--rescan-interval", "30"]).rescan_interval == 30.0
    assert c.vllm_args == ("--dtype", "float32", "--max-model-len=512", "--enforce-eager")


def test_keys_from_the_environment_unless_given(monkeypatch):
    monkeypatch.setenv("HYLORADA_API_KEY", "env-api")
    monkeypatch.setenv("HYLORADA_ADMIN_KEY", "env-admin")
    c = parse_args(["--base", "b", "--adapters", "d"])
    assert (c.api_key, c.admin_key) == ("env-api", "env-admin")
    assert parse_args(["--base", "b", "--adapters", "d", "--api-key", "flag"]).api_key == "flag"


def test_bad_values_exit_2_listing_each(capsys):
    with pytest.raises(SystemExit) as ei:
        parse_args(["--base", "b", "--adapters", "d", "--poll-interval", "-1", "--stable-seconds", "0",
                    "--max-body-mb", "-2", "--lora-modules", "x=/y"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    for flag in ("--poll-interval", "--stable-seconds", "--max-body-mb", "--lora-modules"):
        assert f"  {flag}: " in err, err


def test_base_and_adapters_required_unless_demo(capsys):
    with pytest.raises(SystemExit):
        parse_args([])
    assert "--base: required" in capsys.readouterr().err
    assert parse_args(["--demo", "--cache-dir", "/tmp/x"]).demo


def test_help_explains_every_option():
    parser = build_parser()
    for action in parser._actions:
        assert action.help and len(action.help) > 10, action.option_strings
    text = parser.format_help()
    for must in ("--kv-cache-memory-bytes 1073741824", "--gpu-memory-utilization", "--shutdown-timeout 10",
                 "HYLORADA_API_KEY", "--hf-overrides", "/v1/adapters"):
        assert must in text, must


def test_replica_options_and_their_checks(capsys):
    c = parse_args(["--base", "b", "--adapters", "d", "--replicas", "2", "--ray-address", "auto",
                    "--models-per-replica", "4"])
    assert (c.replicas, c.ray_address, c.models_per_replica, c.vllm_args) == (2, "auto", 4, ())
    assert parse_args(["--base", "b", "--adapters", "d"]).replicas == 0
    with pytest.raises(SystemExit):
        parse_args(["--demo", "--replicas", "2", "--models-per-replica", "0"])
    err = capsys.readouterr().err
    assert "--replicas: not with --demo" in err and "--models-per-replica: must be" in err
    with pytest.raises(SystemExit):
        parse_args(["--base", "b", "--adapters", "d", "--ray-address", "auto", "--replicas", "65"])
    assert "--replicas: must be an integer in 0..64" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--base", "b", "--adapters", "d", "--ray-address", "auto"])
    assert "--ray-address: only with --replicas N" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--base", "b", "--adapters", "d", "--replicas", "2", "--ray-address", "ray://head:10001"])
    assert "a ray:// client address cannot stream" in capsys.readouterr().err
    assert "--replicas" in build_parser().format_help()
