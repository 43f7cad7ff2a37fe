"""Wraps `vllm.v1.core.kv_cache_manager.KVCacheManager.allocate_slots` (scheduler process) so that a
`sink`-mode sequence stops holding KV blocks it will never read again.

A sink request reads only its first `sink_tokens` keys and the last `window` ones (attn_compute.
key_positions). Before vLLM allocates the next step's slots, the blocks lying entirely inside the gap

    [cdiv(sink_tokens, block_size),  (processed - window + 1) // block_size)     (block indices)

(processed = tokens computed and committed, vLLM's own freeing basis) are returned to the pool and
replaced by the null block in the request's block list — the same mechanism vLLM's sliding-window and
R-SWA managers use (`SingleTypeKVCacheManager._remove_blocks_in_range`); the worker's block table keeps
the stale ids, which only the unread gap refers to. Only plain `FullAttentionManager` groups are
trimmed. So per sink sequence the cache holds at most

    cdiv(sinks, bs) + cdiv(window - 1 + tokens scheduled this step, bs) + 2   blocks

instead of cdiv(length, bs). The mode comes from the request's adapter folder (hylorada.json, read once
per path: a replaced adapter has a new path) or the server-wide HYLORADA_ATTENTION default.
vLLM still caps a sequence at max_model_len (RoPE positions and the admission check).

Also wraps `KVCacheManager.prefix_cache_lookup_enabled`: an `s2` request never reads the prefix cache —
its prompt's KV depends on the S² group size G = round(ratio * prompt length), so blocks computed for
another prompt (even one sharing the prefix) are not its blocks. DAA and `sink` KV depend only on the
prefix and positions, so those requests keep prefix caching.
"""
from __future__ import annotations

import json
from pathlib import Path

from .attn_state import ModeSpec, server_default
from .wrap import wrap

MAX_CACHED_SPECS = 1024     # every published adapter version has its own path: bound the cache under hot-swaps


def request_spec(manager, request) -> ModeSpec:
    """The attention mode of a scheduler Request (cached per adapter path on the KV cache manager; the cache is
    emptied when it reaches MAX_CACHED_SPECS paths — a path is only re-read, so nothing is lost)."""
    cache = manager.__dict__.setdefault("_hylorada_specs", {})
    if len(cache) >= MAX_CACHED_SPECS:
        cache.clear()
    lora = getattr(request, "lora_request", None)
    key = None if lora is None else lora.lora_path
    spec = cache.get(key)
    if spec is None:
        default = cache.setdefault(None, server_default())
        try:
            meta = Path(key) / "hylorada.json" if key else None
            att = json.loads(meta.read_text()).get("attention") if meta is not None and meta.is_file() else None
            spec = ModeSpec.from_meta(att) if att else default
        except (OSError, ValueError, TypeError, AttributeError):
            spec = default        # never kill the scheduler: the worker's loader refuses a bad adapter with its reason
        spec = default if spec.mode == "full" else spec
        cache[key] = spec
    return spec


def gap_blocks(spec: ModeSpec, processed: int, block_size: int) -> tuple[int, int]:
    """[first, last) block indices no future query of a sink sequence reads."""
    first = -(-spec.sink_tokens // block_size)
    last = max(0, processed - spec.window + 1) // block_size
    return first, last


def trim(manager, request) -> None:
    from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager
    spec = request_spec(manager, request)
    if spec.mode != "sink":
        return
    processed = max(0, request.num_computed_tokens - getattr(request, "num_in_flight_tokens", 0))
    for m in manager.coordinator.single_type_managers:
        if type(m) is FullAttentionManager:
            first, last = gap_blocks(spec, processed, m.block_size)
            if last > first:
                m._remove_blocks_in_range(request.request_id, first, last)


def allocate_slots(orig, self, request, *args, **kwargs):
    trim(self, request)
    return orig(self, request, *args, **kwargs)


def prefix_cache_lookup_enabled(orig, self, request, *args, **kwargs):
    return orig(self, request, *args, **kwargs) and request_spec(self, request).mode != "s2"


def install() -> None:
    from vllm.v1.core.kv_cache_manager import KVCacheManager
    wrap(KVCacheManager, "allocate_slots")(allocate_slots)
    wrap(KVCacheManager, "prefix_cache_lookup_enabled")(prefix_cache_lookup_enabled)
