"""Attention variants at serving time: PositionalDAA, `sink` (sinks + window) and `s2` per adapter.

    attn_state.py    per-slot modes / DAA tensors and the per-step request plan (no vLLM); the attention half
                     of state.EngineState, fed by engine.py (adapter activation, the runner's step)
    attn_compute.py  the reference attention over the paged KV cache, from hylorada.functional (no vLLM)
    attn_backend.py  CPUAttentionBackendImpl.forward: variant requests take attn_compute, others the kernel
    attn_kv.py       KVCacheManager.allocate_slots: a `sink` sequence frees the KV blocks between sinks and window

This module says where the variants are served (`variants_supported`), validates an adapter's attention parts
for loading.check_servable (`check_attention`), and installs the two attention touch points
(`install`, called from apply.apply()).
"""
from __future__ import annotations


def variants_supported() -> bool:
    """True where install() wires the attention variants in: vLLM's CPU platform (its CPU_ATTN backend)."""
    from vllm.platforms import current_platform
    return current_platform.is_cpu()


def check_attention(served, hf_config) -> None:
    """AdapterError unless the attention mode is known and well formed and DAA fits the engine's heads."""
    from hylorada.format.layout import META, AdapterError

    from .attn_state import ModeSpec, daa_layers
    try:
        ModeSpec.from_meta(served.meta.attention.to_json())
    except ValueError as e:
        raise AdapterError(served.path / META, str(e), "attention") from None
    heads = getattr(hf_config, "num_attention_heads", None)
    for i, (hs, bb, _) in daa_layers(served).items():
        if heads is not None and (hs.shape != (heads,) or bb.shape[0] != heads):
            raise AdapterError(served.path / "hylorada_dynamic.safetensors",
                               f"DAA of layer {i} has {hs.shape[0]} heads, the engine's model {heads}", f"layers.{i}.daa")


def install() -> None:
    """CPU platform only: elsewhere vLLM runs other attention backends that attn_backend does not wrap, so
    nothing is installed (engine.py builds no attention half) and loading.py keeps refusing DAA / sink / s2
    adapters (never served wrongly)."""
    if not variants_supported():
        return
    from . import attn_backend, attn_kv
    attn_backend.install()
    attn_kv.install()
