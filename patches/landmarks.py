"""Per-token landmark read-outs inside vLLM: a forward hook on every decoder layer's MLP block
(`model.layers.{i}.mlp`, vLLM's LlamaMLP and alike) adds, for tokens of slots whose adapter has
landmarks at layer i,

    out[t] += landmark_readout(h[t], K_s, V_s, gate_s)      h = the MLP's input (post-attention norm)

(functional.landmark_readout; the contract's "read the MLP input, add to the MLP output"). One call
per (slot group, layer) — no sequence mixing, no per-token loop. Base tokens and other slots: nothing.
"""
from __future__ import annotations

import re

from hylorada.functional import landmark_readout

MLP_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp$")


def _hook(layer: int, state):
    def hook(_mlp, args, out):
        if not state.groups:
            return None
        h = args[0]
        y = out[0] if isinstance(out, tuple) else out
        for s, g in state.groups:
            lm = state.landmarks[s].get(layer)
            if lm is None:
                continue
            d = landmark_readout(h[g], *lm).to(y.dtype)
            if isinstance(g, slice):
                y[g] += d
            else:
                y.index_add_(0, g, d)
        return None
    return hook


def attach(model, state) -> int:
    """Register the hook on every `layers.{i}.mlp`; returns how many."""
    n = 0
    for name, module in model.named_modules():
        m = MLP_NAME.search(name)
        if m:
            module.register_forward_hook(_hook(int(m.group(1)), state))
            n += 1
    return n
