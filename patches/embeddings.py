"""Trained input-embedding rows per adapter (issue 21, item 3): a token whose id is among its adapter's
embed_tokens.ids is embedded with that adapter's trained row; every other token (the base's, other adapters', ids the
adapter did not train) keeps vLLM's embedding bit for bit.

    EmbedTables  rows[s] = (ids [k] int64 increasing, rows [k, hidden]) of the adapter in slot s, or None: views of
                 the validated side-file tensors the adapter's LoRAModel holds (no copy per slot; bytes counts them)
    the forward hook on the model's input embedding (vLLM's VocabParallelEmbedding, or its LoRA wrapper):
                 out[t] = rows[s][j] for every token t of slot s with token_id[t] == ids[s][j]
                 (functional.embedding_lookup), with each token's slot read from the punica wrapper's
                 token_lora_indices — set by set_active_loras before the step's embedding, including the model
                 runner's embedding outside the forward (prompt embeds), where the step's other plans do not exist yet.

Only untied bases get here: trained embeddings of a tied base change its output projection too and are refused when
the adapter is read (format.checks). Tensor parallel: the hook rewrites the embedding's reduced output, the same on
every rank. GPU form (docs/gpu.md): one [S, k_max] id table and [S, k_max, hidden] rows allocated at start-up, and a
per-token select instead of the per-slot loop (no data-dependent shape). Not built here: the plugin refuses non-CPU
platforms.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from hylorada.functional import embedding_lookup


class EmbedTables:
    def __init__(self, module, num_slots: int, token_slots: Callable[[], Tensor | None]):
        self.module = module                       # the model's input embedding, or None (a model without one)
        self.num_slots = num_slots
        self.token_slots = token_slots             # -> [>= T] vLLM slot per token (-1: the base), or None
        self.rows: list[tuple[Tensor, Tensor] | None] = [None] * num_slots

    @classmethod
    def attach(cls, model, num_slots: int, token_slots: Callable[[], Tensor | None]) -> "EmbedTables":
        """The tables of `model`'s input embedding (the shortest module name ending in 'embed_tokens'), hooked."""
        found = sorted(((n, m) for n, m in model.named_modules() if n.endswith("embed_tokens")), key=lambda x: len(x[0]))
        tables = cls(found[0][1] if found else None, num_slots, token_slots)
        if tables.module is not None:
            tables.module.register_forward_hook(tables.hook)
        return tables

    @property
    def bytes(self) -> int:
        return sum(t.nelement() * t.element_size() for r in self.rows if r is not None for t in r)

    def check(self, served) -> None:
        """AdapterError when the adapter carries embedding rows and this engine's model has no input embedding to
        apply them to (they would be dropped, silently)."""
        from hylorada.format.layout import DYNAMIC, EMBED_ROWS, AdapterError
        if served.embedding_rows is not None and self.module is None:
            raise AdapterError(served.path / DYNAMIC, "trained embedding rows, but this engine's model has no "
                               "'embed_tokens' module to apply them to", EMBED_ROWS)

    def set_slot(self, index: int, served) -> None:
        emb = None if served is None else served.embedding_rows
        if emb is None:
            self.rows[index] = None
            return
        weight = getattr(self.module, "base_layer", self.module).weight
        self.rows[index] = (emb[0].to(weight.device), emb[1].to(weight.device, weight.dtype))

    def hook(self, _module, args, out: Tensor) -> Tensor | None:
        """vLLM's embedding, then the rows of trained tokens replaced (out [T, hidden], args[0] token ids [T])."""
        if not any(r is not None for r in self.rows):
            return None
        slots = self.token_slots()
        tokens = args[0]
        if slots is None or tokens.dim() != 1:
            return None
        n = min(tokens.shape[0], slots.shape[0])
        slots = slots[:n]
        for s in torch.unique(slots).tolist():
            if s < 0 or s >= self.num_slots or self.rows[s] is None:
                continue
            tok = (slots == s).nonzero().squeeze(1)
            where, rows = embedding_lookup(tokens[tok], *self.rows[s])
            out[tok[where]] = rows
        return out
