"""Trained RMSNorm weights per adapter (issue 21, item 2): a token of an adapter that carries a norm's trained weight
is normalised with that weight; tokens of the base and of adapters without trained norms keep vLLM's own output,
bit for bit (an adapter that trained some norms gets the base's weight, recomputed, on the others).

    NormTables   for every RMSNorm of the model, by its side-file name ('layers.{i}.input_layernorm',
                 'layers.{i}.post_attention_layernorm', 'norm'):
                   weight[name] [S+1, d]  row s: the weight slot s's adapter trained, else the base's; row S: the base's
                 and has [S+1] bool (slot s's adapter carries trained norms). Allocated when the first such adapter
                 enters a slot (none at all while no adapter has them), rows written in place after that.
    begin_step(slot_all)  rows [n]: the step's tokens of slots with trained norms, and their slots (once per step)
    the wrapped RMSNorm forward: vLLM's output, then out[rows] = functional.rms_norm(pre[rows], weight[slot], eps)
                 with pre the norm's input as the model defines it: x, or x + residual (the residual vLLM returns;
                 transformers' Llama adds the residual in the model's dtype before its norm too).

GPU form (docs/gpu.md): the tables allocated at start-up, and `rows` replaced by a per-token select over all tokens
(no data-dependent shape). Not built here: the plugin refuses non-CPU platforms.
"""
from __future__ import annotations

import torch
from torch import Tensor

from hylorada.functional import rms_norm

from .wrap import wrap


class NormTables:
    def __init__(self, modules: dict[str, object], num_slots: int):
        self.modules = modules                      # side-file name -> vLLM RMSNorm (its .weight is the base's)
        self.num_slots = num_slots
        self.weight: dict[str, Tensor] | None = None
        self.has = torch.zeros(num_slots + 1, dtype=torch.bool)
        self.rows: Tensor | None = None
        self.slots: Tensor | None = None

    @classmethod
    def attach(cls, model, num_slots: int) -> "NormTables":
        """The tables of `model`'s RMSNorms (vLLM's RMSNorm, named model.layers.{i}.*_layernorm / model.norm)."""
        from vllm.model_executor.layers.layernorm import RMSNorm
        found = {}
        for name, m in model.named_modules():
            if type(m) is RMSNorm and (name.endswith("layernorm") or name.endswith(".norm")):
                found[name.split("model.", 1)[-1]] = m
        tables = cls(found, num_slots)
        for name, m in found.items():
            m.hylorada_norm = (tables, name)
        return tables

    @property
    def bytes(self) -> int:
        return sum(t.nelement() * t.element_size() for t in (self.weight or {}).values())

    def check(self, served) -> None:
        """AdapterError when the adapter trained a norm this engine's model has no RMSNorm table for (it would be
        served with the base's weight, silently)."""
        from hylorada.format.layout import DYNAMIC, NORM_KEY, AdapterError
        for k in served.dynamic:
            if NORM_KEY.match(k) and k.rsplit(".", 1)[0] not in self.modules:
                raise AdapterError(served.path / DYNAMIC, "a trained norm this engine's model has no RMSNorm for "
                                   f"(it has {len(self.modules)})", k)

    def _allocate(self) -> None:
        S = self.num_slots
        self.weight = {n: m.weight.detach()[None].repeat(S + 1, 1) for n, m in self.modules.items()}
        self.has = self.has.to(next(iter(self.weight.values())).device)

    def set_slot(self, index: int, served) -> None:
        """The norms of the adapter now in slot `index` (the base's where it trained none)."""
        trained = served is not None and served.meta.norms
        if not trained and self.weight is None:
            return
        if self.weight is None:
            self._allocate()
        for n, m in self.modules.items():
            w = served.norm(n) if trained else None
            self.weight[n][index] = m.weight.detach() if w is None else w.to(self.weight[n])
        self.has[index] = trained

    def begin_step(self, slot_all: Tensor | None) -> None:
        """slot_all [T] slot per token (base -> S), or None when the step has no adapter tokens."""
        self.rows = self.slots = None
        if slot_all is None or self.weight is None:
            return
        rows = self.has[slot_all].nonzero().squeeze(1)
        if rows.numel():
            self.rows, self.slots = rows, slot_all[rows]

    def end_step(self) -> None:
        self.rows = self.slots = None


def norm_forward(orig, self, x, residual=None, *args, **kwargs):
    """vLLM's RMSNorm, then the rows of adapters with a trained weight for this norm normalised with it."""
    tables, name = self.__dict__.get("hylorada_norm", (None, None))
    rows = None if tables is None else tables.rows
    if rows is None:
        return orig(self, x, residual, *args, **kwargs)
    pre = x[rows] if residual is None else None           # a copy: read before vLLM's (possibly in-place) kernel
    out = orig(self, x, residual, *args, **kwargs)
    y, new_residual = (out, None) if residual is None else out
    if pre is None:
        pre = new_residual[rows]
    y[rows] = rms_norm(pre, tables.weight[name][tables.slots], self.variance_epsilon).to(y.dtype)
    return out


def install() -> None:
    from vllm.model_executor.layers.layernorm import RMSNorm
    wrap(RMSNorm, "forward")(norm_forward)
