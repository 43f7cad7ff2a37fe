"""Attention variants at serving time: PositionalDAA, `sink` (sinks + window) and `s2` per adapter.

    attn_state.py    per-slot modes / DAA tensors and the per-step request plan (no vLLM)
    attn_compute.py  the reference attention over the paged KV cache, from hylorada.functional (no vLLM)
    attn_hooks.py    LoRAModelManager / model runner / loading touch points that feed attn_state
    attn_backend.py  CPUAttentionBackendImpl.forward: variant requests take attn_compute, others the kernel
    attn_kv.py       KVCacheManager.allocate_slots: a `sink` sequence frees the KV blocks between sinks and window

`install()` is called once from patches.apply.apply().
"""
from __future__ import annotations


def variants_supported() -> bool:
    """True where install() wires the attention variants in: vLLM's CPU platform (its CPU_ATTN backend)."""
    from vllm.platforms import current_platform
    return current_platform.is_cpu()


def install() -> None:
    """CPU platform only: elsewhere vLLM runs other attention backends that attn_backend does not wrap, so
    nothing is installed and loading.py keeps refusing DAA / sink / s2 adapters (never served wrongly)."""
    if not variants_supported():
        return
    from . import attn_backend, attn_hooks, attn_kv
    attn_hooks.install()
    attn_backend.install()
    attn_kv.install()
