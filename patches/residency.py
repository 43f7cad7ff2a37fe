"""Where each adapter lives in the engine, for `GET /v1/adapters` and `/metrics` (issue 18, item 2): one worker
method, `hylorada_lora_residency() -> dict`, added to vLLM's `WorkerBase` (a string method name, as control.py's),
and the per-adapter load count that `loading.load_adapter` feeds.

    {"slots": [lora_int_id, ...],           # in a LoRA slot now (vLLM's lora_index_to_id; what a batch reads)
     "host": {lora_int_id: bytes, ...},     # in the worker's CPU cache (LRUCacheLoRAModelManager's registered
                                            #   adapters): tensor bytes of its LoRA weights (+ side file)
     "loads": {lora_int_id: n, ...},        # times the worker read it from disk (_load_adapter); every load after
                                            #   the first is a cache miss after an eviction
     "stamped_loads": {lora_int_id: n},     # of those, the loads a checked stamp vouched for (loading.py: the
                                            #   LoRA values neither read twice nor checked again)
     "capacity": {"slots": max_loras, "host": max_cpu_loras,
                  "slot_bytes": n,          # bytes of the per-slot weight copies the layers hold: vLLM's slot
                                            #   stacks, kept only while the LoRA path reads them (layers.py); on the
                                            #   grouped path 1-slot placeholders, whatever max_loras is
                  "batch_bytes": n,         # the grouped path's decode batch stacks (stacks.SliceStack): the
                                            #   weights of at most as many adapters as one step has run at once
                  "rope_tables": k, "rope_bytes": n,    # RoPE settings served (the base's included) and the bytes
                                            #   of their tables beyond the base's (rope.RopeTables; per engine)
                  "norm_bytes": n,          # per-slot trained-norm tables (norms.NormTables; 0 until an adapter
                                            #   with trained norms enters a slot)
                  "embed_bytes": n}}        # trained embedding rows of the adapters in slots (embeddings.EmbedTables:
                                            #   views of the host copies when the engine's dtype is float32)

An adapter the server serves that is in neither is on disk only (its validated private copy): the next request for
it loads it again. The load counts are kept for the newest MAX_TRACKED ids (uids only grow: older ones were freed).

Byte budget (HYLORADA_CPU_LORA_BYTES, `hylorada-serve --max-cpu-lora-mb`): after vLLM's
`LRUCacheLoRAModelManager.add_adapter` (which evicts by count, --max-cpu-loras), the least recently used adapters
are evicted while the cache's bytes exceed the budget — but never the `max_loras` most recently used: a step adds
(or touches) every adapter its batch needs, at most max_loras, right before activating them, so those are the
newest and stay; the cache can exceed the budget by at most those. An evicted adapter is read again from its
validated copy when a request needs it (a load, counted above).
"""
from __future__ import annotations

from collections import OrderedDict

from .wrap import add, wrap

MAX_TRACKED = 65536
_LOADS: OrderedDict[int, int] = OrderedDict()
_STAMPED: OrderedDict[int, int] = OrderedDict()


def count_load(lora_int_id: int, stamped: bool = False) -> None:
    """One read of adapter `lora_int_id` from disk in this worker (called by loading.load_adapter); `stamped`: a
    checked stamp vouched for its values."""
    for counts, add in ((_LOADS, True), (_STAMPED, stamped)):
        if add:
            counts[lora_int_id] = counts.pop(lora_int_id, 0) + 1
            while len(counts) > MAX_TRACKED:
                counts.popitem(last=False)


def lora_bytes(lora_model) -> int:
    """Bytes of a vLLM LoRAModel's tensors: lora_a / lora_b of every module (lists for packed modules), plus the
    side file's tensors when loading.py attached them."""
    total = 0
    for w in getattr(lora_model, "loras", {}).values():
        for t in (getattr(w, "lora_a", None), getattr(w, "lora_b", None)):
            for x in (t if isinstance(t, (list, tuple)) else [t]):
                total += int(x.nelement() * x.element_size()) if hasattr(x, "nelement") else 0
    served = getattr(lora_model, "hylorada", None)        # a ServedAdapter with its LoRA dropped (loading.py)
    if served is not None:
        total += int(served.size_bytes)
    return total


def hylorada_lora_residency(self) -> dict:
    manager = self.model_runner.lora_manager._adapter_manager
    host = {int(i): lora_bytes(m) for i, m in manager.list_adapters().items()}
    return {"slots": [int(i) for i in manager.lora_index_to_id if i is not None], "host": host,
            "loads": dict(_LOADS), "stamped_loads": dict(_STAMPED), "capacity": {"slots": int(manager.lora_slots), "host": int(manager.capacity),
                                                "slot_bytes": slot_bytes(manager), "batch_bytes": batch_bytes(manager),
                                                **dynamic_capacity(manager)}}


def dynamic_capacity(manager) -> dict:
    """The engine-wide RoPE tables, per-slot trained-norm tables and embedding rows (rope.py, norms.py,
    embeddings.py) in numbers and bytes."""
    state = getattr(manager, "hylorada", None)
    rope, norms, embeds = (getattr(state, k, None) for k in ("rope", "norms", "embeds"))
    return {"rope_tables": len(rope.keys) if rope is not None else 1, "rope_bytes": rope.bytes if rope is not None else 0,
            "norm_bytes": norms.bytes if norms is not None else 0, "embed_bytes": embeds.bytes if embeds is not None else 0}


def slot_bytes(manager) -> int:
    """Bytes of the HyLoRADA layers' slot stacks (lora_a_stacked / lora_b_stacked) in this worker."""
    from .layers import HyLoRADALinearMixin
    return sum(t.nelement() * t.element_size() for m in manager.modules.values() if isinstance(m, HyLoRADALinearMixin)
               for t in (*m.lora_a_stacked, *m.lora_b_stacked))


def batch_bytes(manager) -> int:
    """Bytes of the HyLoRADA layers' decode batch stacks (stacks.SliceStack) in this worker."""
    from .layers import HyLoRADALinearMixin
    return sum(st.nbytes for m in manager.modules.values() if isinstance(m, HyLoRADALinearMixin)
               for st in m.hy_stacks)


def over_budget(sizes: list[int], budget: int, keep: int) -> int:
    """How many of the oldest entries to evict: `sizes` in LRU order (oldest first), the newest `keep` never."""
    total, n = sum(sizes), 0
    while budget > 0 and total > budget and len(sizes) - n > keep:
        total -= sizes[n]
        n += 1
    return n


def add_adapter(orig, self, lora) -> bool:
    """vLLM's add (count-bounded LRU), then evict by bytes (over_budget) when a budget is set."""
    from .env import Settings
    added = orig(self, lora)
    budget = Settings.read().cpu_lora_bytes
    if budget:
        reg = self._registered_adapters                     # vLLM's LRU (cachetools): `order` is oldest first
        ids = [i for i in reg.order if i not in reg.pinned_items]
        data = reg.cache
        for uid in ids[:over_budget([lora_bytes(data[i]) for i in ids], budget, self.lora_slots)]:
            self.remove_adapter(uid)
    return added


def install() -> None:
    from vllm.lora.model_manager import LRUCacheLoRAModelManager
    from vllm.v1.worker.worker_base import WorkerBase
    add(WorkerBase, "hylorada_lora_residency", hylorada_lora_residency)
    wrap(LRUCacheLoRAModelManager, "add_adapter")(add_adapter)
