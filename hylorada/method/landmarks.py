"""LandmarkLoRA: K learnable landmark key/value vectors per decoder layer, read per token.

For each token, from its own hidden state h only (the MLP block's input, i.e. the
post_attention_layernorm output) the block's output gains

    out += tanh(gate) * softmax(h K^T / sqrt(d)) V          (functional.landmark_readout)

O(K*d) per token and no mixing across the sequence (the public code's sequence-mean read-out
leaks future tokens and cannot be served per token). gate starts at 0, so tanh(gate) == 0 and a
fresh module adds exactly 0.0 (the base is reproduced bit for bit) while the gate still has a
gradient (d tanh/dx = 1 at 0) and the keys/values start small and random (so they have one too
once the gate opens). Installed as `mlp.landmark` (checkpoint keys
model.layers.{i}.mlp.landmark.keys [K, d], .values [K, d], .gate []) plus a forward hook on `mlp`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from hylorada import functional as F


class LandmarkLoRA(nn.Module):
    """keys [K, d], values [K, d] ~ N(0, init_std^2), gate [] = 0."""

    def __init__(self, num_landmarks: int, hidden_size: int, init_std: float = 0.02,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.num_landmarks, self.hidden_size = num_landmarks, hidden_size
        shape = (num_landmarks, hidden_size)
        self.keys = nn.Parameter((torch.randn(shape, generator=generator) * init_std).to(dtype))
        self.values = nn.Parameter((torch.randn(shape, generator=generator) * init_std).to(dtype))
        self.gate = nn.Parameter(torch.zeros((), dtype=dtype))

    def forward(self, h: Tensor) -> Tensor:
        """h: [..., d] -> read-out [..., d] (per token)."""
        return F.landmark_readout(h, self.keys, self.values, self.gate)

    def extra_repr(self) -> str:
        return f"K={self.num_landmarks}, d={self.hidden_size}"


def _mlp_hook(mlp: nn.Module, args: tuple, output: Tensor) -> Tensor:
    """Forward hook on a decoder MLP: output [B, T, d] += landmark read-out of its input [B, T, d]."""
    return output + mlp.landmark(args[0]).to(output.dtype)


def install_landmarks(decoder_layers, num_landmarks: int, hidden_size: int, seed: int = 0) -> list:
    """Attach `mlp.landmark` + the read-out hook to every layer; returns the hook handles.

    Layer i's keys/values are drawn from a generator seeded with (seed, i), so a rebuild is identical.
    """
    handles = []
    for i, layer in enumerate(decoder_layers):
        mlp = layer.mlp
        if hasattr(mlp, "landmark"):
            raise ValueError(f"layer {i} already has a landmark module")
        g = torch.Generator().manual_seed(seed * 100003 + i)
        mlp.landmark = LandmarkLoRA(num_landmarks, hidden_size, generator=g)     # float32 trainables
        handles.append(mlp.register_forward_hook(_mlp_hook))
    return handles
