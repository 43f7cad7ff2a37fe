"""RoPE per adapter (DESIGN.md §4): adapters with different `rope_scaling` served side by side by one engine.

    RopeTables      one engine's rotary tables. Table 0 is the engine's own cos/sin cache (the base's RoPE; L rows,
                    L = the engine's max_position_embeddings, which hylorada-serve sizes for the longest adapter);
                    each further distinct setting (linear xk, YaRN) gets one table of L rows appended to every
                    rotary module's `cos_sin_cache` (hylorada.method.rope.rope_table: transformers' own frequencies
                    and attention factor), so rows [k·L, (k+1)·L) are table k. At most MAX_TABLES per engine; a
                    table is built when the first adapter asking for it loads, and kept (L x rotary_dim floats).
    slot_table [S+1]  each slot's table (row S: the base = 0), written when an adapter enters the slot
    step_positions  positions + L·slot_table[slot of each token], once per step (EngineState.begin_step), or None when
                    no table but the base's exists; the rotary forward (wrapped below) reads its cos/sin rows at
                    these indices — vLLM's own rotary kernel over a longer cache, no other change.
    check_rope(served, hf_config)
                    whether an engine with this config can serve the adapter's setting: a known type on a base
                    without a scaling of its own, needing no more positions than the engine has (AdapterError
                    naming the reason otherwise). Run at validation (server) and again at load (worker).

Dynamic NTK maps to table 0 (hylorada.method.rope: exact up to the original length, unscaled past it).
On a GPU the same design holds with fixed capacity: the tables allocated once at start-up, slot_table and the
per-token positions persistent buffers written in place (docs/gpu.md); not built here.
"""
from __future__ import annotations

import json

import torch
from torch import Tensor

from hylorada.format.layout import META, AdapterError

from .wrap import wrap

MAX_TABLES = 16                 # distinct RoPE settings one engine serves (table 0, the base's, included)


def setting_key(meta: dict | None) -> str | None:
    """Adapters with the same key share a table; None = the base's table (no scaling, dynamic NTK)."""
    if meta is None or meta["rope_type"] == "dynamic":
        return None
    keep = {"rope_type": meta["rope_type"], "factor": float(meta["factor"])}
    if meta["rope_type"] == "yarn":
        keep["original_max_position_embeddings"] = int(meta["original_max_position_embeddings"])
    return json.dumps(keep, sort_keys=True)


def check_rope(served, hf_config) -> None:
    """AdapterError unless an engine whose HF config is `hf_config` can serve `served`'s RoPE setting."""
    from hylorada.method.rope import rope_parameters, served_context
    meta = served.meta.rope_scaling
    if meta is None:
        return
    try:
        rope_parameters(meta, hf_config)
    except (ValueError, KeyError) as e:
        raise AdapterError(served.path / META, f"rope_scaling {meta!r} cannot be served on this base: {e}",
                           "rope_scaling") from None
    need, have = served_context(meta, hf_config), int(hf_config.max_position_embeddings)
    if need > have:
        raise AdapterError(served.path / META, f"rope_scaling {meta!r} is meant for {need} positions; this engine "
                           f"serves at most {have} (start hylorada-serve with this adapter in DIR/, or with "
                           f"--max-model-len {need})", "rope_scaling")


class RopeTables:
    def __init__(self, rotaries: list, num_slots: int, hf_config):
        self.rotaries = rotaries
        self.hf_config = hf_config
        self.rows = int(rotaries[0].cos_sin_cache.shape[0]) if rotaries else 0
        self.keys: list[str | None] = [None]
        device = rotaries[0].cos_sin_cache.device if rotaries else "cpu"
        self.slot_table = torch.zeros(num_slots + 1, dtype=torch.long, device=device)
        self.offsets = torch.zeros_like(self.slot_table)
        self.step_positions: Tensor | None = None

    @classmethod
    def attach(cls, model, num_slots: int, hf_config) -> "RopeTables":
        """The tables of `model`'s plain rotary embeddings (vLLM's RotaryEmbedding, cos_sin_cache in place), each
        told where to find them. A model whose rotary is scaled already gets no tables (check_rope refuses every
        scaled adapter on such a base)."""
        from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding
        rotaries = [m for m in model.modules() if type(m) is RotaryEmbedding and hasattr(m, "cos_sin_cache")]
        tables = cls(rotaries, num_slots, hf_config)
        for m in rotaries:
            m.hylorada_rope = tables
        return tables

    @property
    def bytes(self) -> int:
        """Host bytes of the tables beyond the base's (counted per engine, not per adapter)."""
        return sum((m.cos_sin_cache.shape[0] - self.rows) * m.cos_sin_cache.shape[1] * m.cos_sin_cache.element_size()
                   for m in self.rotaries)

    def register(self, served) -> int:
        """The table of `served`'s setting, built now if it is new (at load, before any slot). AdapterError when
        it cannot be: a base without plain rotary modules, a table width that differs, or MAX_TABLES reached."""
        key = setting_key(served.meta.rope_scaling)
        if key in self.keys:
            return self.keys.index(key)
        where = served.path / META
        if not self.rotaries:
            raise AdapterError(where, "this engine's model has no plain rotary embedding to add a RoPE table to",
                               "rope_scaling")
        if len(self.keys) >= MAX_TABLES:
            raise AdapterError(where, f"this engine already serves {MAX_TABLES} distinct RoPE settings "
                               f"({', '.join(k or 'base' for k in self.keys)}); a new one cannot be added",
                               "rope_scaling")
        from hylorada.method.rope import rope_table
        table = rope_table(served.meta.rope_scaling, self.hf_config, self.rows)
        for m in self.rotaries:
            if table.shape[1] != m.cos_sin_cache.shape[1]:
                raise AdapterError(where, f"RoPE table width {table.shape[1]} differs from the engine's rotary "
                                   f"({m.cos_sin_cache.shape[1]})", "rope_scaling")
        for m in self.rotaries:
            m.cos_sin_cache = torch.cat((m.cos_sin_cache, table.to(m.cos_sin_cache)))
        self.keys.append(key)
        return len(self.keys) - 1

    def set_slot(self, index: int, served) -> None:
        """The table of the adapter now in slot `index` (registered at load; 0 for a plain or absent adapter)."""
        self.slot_table[index] = 0 if served is None else self.register(served)
        self.offsets[index] = self.slot_table[index] * self.rows

    def begin_step(self, positions: Tensor, slot_all: Tensor | None) -> None:
        """slot_all [T] slot per token (base -> S), or None when the step has no adapter tokens."""
        if slot_all is None or len(self.keys) == 1:
            self.step_positions = None
            return
        self.step_positions = positions + self.offsets[slot_all]

    def end_step(self) -> None:
        self.step_positions = None

    def positions_for(self, positions: Tensor) -> Tensor:
        p = self.step_positions
        return p if p is not None and p.shape == positions.shape else positions


def rotary_forward(orig, self, positions, *args, **kwargs):
    """vLLM's rotary forward with each token's row of its adapter's table (RopeTables.positions_for)."""
    tables = self.__dict__.get("hylorada_rope")
    if tables is not None:
        positions = tables.positions_for(positions)
    return orig(self, positions, *args, **kwargs)


def install() -> None:
    from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding
    wrap(RotaryEmbedding, "forward")(rotary_forward)
