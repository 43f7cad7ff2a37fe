"""hylorada_serve/replicas/argv.py: each replica's command line from the user's."""
from __future__ import annotations

from hylorada_serve.replicas.argv import replica_argv, with_audit_suffix, without_key_flags


def test_replica_options_and_the_address_are_dropped_paths_made_absolute(tmp_path):
    (tmp_path / "base").mkdir()
    argv = ["--base", "base", "--adapters", "ads", "--replicas", "2", "--ray-address=auto", "--host", "0.0.0.0",
            "--port=9000", "--models-per-replica", "4", "--dtype", "float32", "--enforce-eager", "--max-loras", "4"]
    out = replica_argv(argv, max_cpu_loras=8, cwd=str(tmp_path))
    assert out == ["--base", str(tmp_path / "base"), "--adapters", str(tmp_path / "ads"), "--dtype", "float32",
                   "--enforce-eager", "--max-loras", "4", "--max-cpu-loras", "8"]


def test_a_hub_id_stays_and_a_given_cpu_cache_is_kept(tmp_path):
    out = replica_argv(["--base", "org/model", "--adapters", "/abs/ads", "--max_cpu_loras", "32"], 8,
                       cwd=str(tmp_path))
    assert out == ["--base", "org/model", "--adapters", "/abs/ads", "--max_cpu_loras", "32"]


def test_each_replica_writes_its_own_audit_file():
    assert with_audit_suffix(["--audit-log", "/var/a.log", "--x"], "r1") == ["--audit-log", "/var/a.log.r1", "--x"]
    assert with_audit_suffix(["--audit-log=/a.log"], "r2") == ["--audit-log=/a.log.r2"]
    assert with_audit_suffix(["--base", "b"], "r3") == ["--base", "b"]


def test_keys_never_reach_a_replicas_command_line():
    argv = ["--api-key", "k1", "--admin_key=k2", "--metrics-key", "k3", "--base", "b", "--port", "1"]
    assert without_key_flags(argv) == ["--base", "b", "--port", "1"]


def test_paths_that_do_not_exist_yet_are_made_absolute_but_a_hub_id_is_not(tmp_path):
    out = replica_argv(["--base", "org/m", "--audit-log", "logs/audit.jsonl", "--keys=keys.toml"], 8,
                       cwd=str(tmp_path))
    assert out == ["--base", "org/m", "--audit-log", str(tmp_path / "logs/audit.jsonl"),
                   f"--keys={tmp_path / 'keys.toml'}", "--max-cpu-loras", "8"]
