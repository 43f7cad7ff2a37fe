"""vLLM's arguments as hylorada-serve builds them (hylorada_serve/launch.py): the engine is sized by a fixed KV cache
unless the user sizes it, our other defaults yield to the user's flags. vLLM's parser, no engine."""
from __future__ import annotations

import pytest

from hylorada_serve.config import ServeConfig
from hylorada_serve.launch import engine_argv, vllm_args


def config(tmp_path, *vllm: str, **kw) -> ServeConfig:
    return ServeConfig(base=str(tmp_path / "base"), adapters=str(tmp_path), vllm_args=vllm, **kw)


def value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_default_kv_cache_is_fixed_bytes_not_a_share(tmp_path):
    argv = engine_argv(config(tmp_path))
    assert value(argv, "--kv-cache-memory-bytes") == str(1 << 30)
    assert "--gpu-memory-utilization" not in argv
    assert value(argv, "--shutdown-timeout") == "10" and "--enable-lora" in argv
    assert value(engine_argv(config(tmp_path, kv_cache_memory_bytes=123 << 20)), "--kv-cache-memory-bytes") == \
        str(123 << 20)


@pytest.mark.parametrize("user", [("--gpu-memory-utilization", "0.5"), ("--gpu_memory_utilization=0.5",),
                                  ("--kv-cache-memory-bytes", "5000000"), ("--device-memory-utilization", "0.4")])
def test_users_own_sizing_wins(tmp_path, user):
    argv = engine_argv(config(tmp_path, *user))
    assert argv.count("--kv-cache-memory-bytes") == (1 if "--kv-cache-memory-bytes" in user else 0)
    assert argv[-len(user):] == list(user)


def test_users_shutdown_timeout_and_rope_win(tmp_path):
    argv = engine_argv(config(tmp_path, "--shutdown-timeout", "3", "--hf-overrides", "{}"), rope=["--hf-overrides",
                                                                                                  '{"x": 1}'])
    assert argv.count("--shutdown-timeout") == 1 and argv.count("--hf-overrides") == 1
    assert value(engine_argv(config(tmp_path), rope=["--hf-overrides", "{}"]), "--hf-overrides") == "{}"


def test_vllm_parses_them(tmp_path):
    args = vllm_args(config(tmp_path, "--dtype", "float32", max_cpu_loras=8))
    assert args.kv_cache_memory_bytes == 1 << 30 and args.enable_lora and args.max_cpu_loras == 8
    assert args.served_model_name == ["base"] and args.shutdown_timeout == 10
    shared = vllm_args(config(tmp_path, "--gpu-memory-utilization", "0.5"))
    assert shared.kv_cache_memory_bytes is None and shared.gpu_memory_utilization == 0.5


def test_engine_context_follows_the_adapters_within_bounds(tmp_path, tiny_base, capsys):
    """context_overrides: no override while nothing needs more than the base's 4096 positions; the longest start-up
    adapter's context (linear x4 -> 16384) otherwise, at most 8x the base and what the KV cache holds; the user's
    --max-model-len above the base wins; the user's own --hf-overrides leaves everything to them."""
    import json

    from hylorada_serve.launch import MAX_AUTO_CONTEXT_FACTOR, context_overrides, kv_bytes_per_token
    from transformers import AutoConfig

    def cfg(*vllm, **kw):
        return ServeConfig(base=str(tiny_base), adapters=str(adapters), vllm_args=vllm, **kw)

    def n_of(argv):
        return json.loads(value(argv, "--hf-overrides"))["max_position_embeddings"] if argv else None

    adapters = tmp_path / "dir"
    adapters.mkdir()
    assert context_overrides(cfg()) == []
    for name, factor in (("x4", 4.0), ("x64", 64.0)):
        (adapters / name).mkdir()
        (adapters / name / "hylorada.json").write_text(json.dumps({"format_version": 1, "kind": "hylorada",
            "rope_scaling": {"rope_type": "linear", "factor": factor, "original_max_position_embeddings": 4096}}))
    assert n_of(context_overrides(cfg())) == MAX_AUTO_CONTEXT_FACTOR * 4096              # x64 asks 262144
    assert "bounded from 262144" in capsys.readouterr().out
    (adapters / "x64" / "hylorada.json").unlink()
    assert n_of(context_overrides(cfg())) == 16384
    per_token = kv_bytes_per_token(AutoConfig.from_pretrained(tiny_base))
    assert n_of(context_overrides(cfg(kv_cache_memory_bytes=per_token * 10000))) == 10000   # what the KV cache holds
    assert n_of(context_overrides(cfg("--kv-cache-memory-bytes", "1000"))) == 16384        # the user's sizing: theirs
    assert n_of(context_overrides(cfg("--max-model-len", "6000"))) == 6000
    assert n_of(context_overrides(cfg("--max-model-len=32k"))) == 32000
    assert n_of(context_overrides(cfg("--max-model-len", "32K"))) == 32768              # vLLM's binary suffix
    assert context_overrides(cfg("--max-model-len", "auto")) == []
    assert context_overrides(cfg("--max-model-len", "2048")) == []
    args = vllm_args(ServeConfig(base=str(tiny_base), adapters=str(adapters), vllm_args=("--dtype", "float32")))
    over = json.loads(args.hf_overrides) if isinstance(args.hf_overrides, str) else args.hf_overrides
    assert over == {"max_position_embeddings": 16384}                                   # reaches vLLM's own parser
