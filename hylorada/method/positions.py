"""How each token's position reaches the adapter layers inside a transformers model.

A forward pre-hook on the decoder's rotary embedding records the `position_ids` the model is
about to use for RoPE — so the adapter sees exactly RoPE's positions, with left padding
(generate() builds them from the attention mask) and with a KV cache (decode steps continue
from the cache length). The context belongs to one HyLoRADAModel (no global state); each
forward overwrites it before any decoder layer runs.
"""
from __future__ import annotations

from torch import Tensor, nn

from hylorada.functional import position_bucket


class PositionContext:
    """position_ids [B or 1, T] of the forward in progress, and their buckets (computed once)."""

    def __init__(self, num_buckets: int, max_position: int):
        self.num_buckets = num_buckets
        self.max_position = max_position
        self.position_ids: Tensor | None = None
        self._buckets: Tensor | None = None

    def set(self, position_ids: Tensor) -> None:
        self.position_ids = position_ids
        self._buckets = None

    @property
    def buckets(self) -> Tensor | None:
        """bucket(pos) for every token, [B or 1, T] int64 — once per forward, shared by all layers."""
        if self.position_ids is None:
            return None
        if self._buckets is None:
            self._buckets = position_bucket(self.position_ids, self.num_buckets, self.max_position)
        return self._buckets


def find_rotary_embedding(model: nn.Module) -> nn.Module:
    """The decoder's shared rotary embedding module (Llama/Mistral/Qwen2: `model.rotary_emb`)."""
    for name, module in model.named_modules():
        if name.endswith("rotary_emb"):
            return module
    raise ValueError("this model has no `rotary_emb` module: HyLoRADA supports Llama-family decoders "
                     "(Llama, Mistral, Qwen2) whose positions go through one shared rotary embedding")


def track_positions(model: nn.Module, context: PositionContext):
    """Install the pre-hook that feeds `context`; returns the hook handle."""

    def hook(_module, args, kwargs):
        pos = kwargs.get("position_ids")
        if pos is None and len(args) > 1:
            pos = args[1]
        if pos is not None:
            context.set(pos)

    return find_rotary_embedding(model).register_forward_pre_hook(hook, with_kwargs=True)
