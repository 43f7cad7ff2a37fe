"""nn.Modules of the method core: thin shells that own parameters and call `functional`.

HyLoRADAUnified   the adapter of one target linear (the seed's parameter names and shapes)
HyLoRADALinear    wraps the frozen nn.Linear: y = c * (W x + s * p(pos) * B A x) + b
PositionBias      the 64-bucket vector shared by every layer of a model
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from hylorada import functional as F
from hylorada.method.positions import PositionContext


class PositionBias(nn.Module):
    """bias [num_buckets], zero-initialised: p(pos) = 1 + sigmoid(w_pos) * tanh(bias[bucket(pos)]) == 1 at init."""

    def __init__(self, num_buckets: int = 64, max_position: int = 32768):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_position = max_position
        self.bias = nn.Parameter(torch.zeros(num_buckets))

    def buckets(self, positions: Tensor) -> Tensor:
        return F.position_bucket(positions, self.num_buckets, self.max_position)


class HyLoRADAUnified(nn.Module):
    """Adapter parameters for one linear W [d_out, d_in] (names and shapes as in the seed):

    lora_A [r, d_in] orthogonal rows, lora_B [d_out, r] zeros, magnitude [d_out] = ||W|| per row,
    magnitude_gate [] (g = sigmoid), residual_weight [] (beta = sigmoid), position_scale [] (w_pos);
    buffer magnitude_init [d_out] = ||W|| per row (the (1-g) side of the gate).
    """

    def __init__(self, weight: Tensor, rank: int, alpha: float, *, use_rslora: bool = True, dropout: float = 0.0,
                 train_magnitude: bool = True, magnitude_gate_init: float = 0.0, residual_weight_init: float = 0.0,
                 position_scale_init: float = 0.0, generator: torch.Generator | None = None):
        super().__init__()
        d_out, d_in = weight.shape
        self.rank, self.scaling = rank, F.lora_scaling(alpha, rank, use_rslora)
        a = torch.empty(rank, d_in, dtype=torch.float32)
        nn.init.orthogonal_(a, generator=generator)
        self.lora_A = nn.Parameter(a.to(weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(d_out, rank, dtype=weight.dtype))
        norm = torch.linalg.norm(weight.detach(), dim=1)
        self.magnitude = nn.Parameter(norm.clone(), requires_grad=train_magnitude)
        self.register_buffer("magnitude_init", norm.clone())
        self.magnitude_gate = nn.Parameter(torch.tensor(float(magnitude_gate_init), dtype=weight.dtype))
        self.residual_weight = nn.Parameter(torch.tensor(float(residual_weight_init), dtype=weight.dtype))
        self.position_scale = nn.Parameter(torch.tensor(float(position_scale_init), dtype=weight.dtype))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, W: Tensor, b: Tensor | None, p: Tensor | None) -> Tensor:
        """x: [..., d_in], p: per-token position scale broadcastable to x[..., 0] or None."""
        return F.hylorada_linear(x, W, b, self.lora_A, self.lora_B, self.scaling, self.magnitude, self.magnitude_init,
                                 self.magnitude_gate, self.residual_weight, p, lora_x=self.dropout(x),
                                 w_norm=self.magnitude_init)             # = ||W|| per row, W frozen

    def position_scale_for(self, bias: PositionBias, buckets: Tensor) -> Tensor:
        return F.position_scale(bias.bias, self.position_scale, buckets)


class HyLoRADALinear(nn.Module):
    """A frozen nn.Linear (`base_layer`) plus its adapter (`hylorada`).

    The shared PositionBias and PositionContext are held by reference (not registered), so
    the one bias vector appears once in the model's parameters and checkpoint.
    """

    def __init__(self, base_layer: nn.Linear, adapter: HyLoRADAUnified, position_bias: PositionBias | None,
                 context: PositionContext):
        super().__init__()
        self.base_layer = base_layer
        self.hylorada = adapter
        self.__dict__["_position_bias"] = position_bias
        self.__dict__["_context"] = context
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features

    def forward(self, x: Tensor) -> Tensor:
        p = None
        pb, buckets = self._position_bias, self._context.buckets
        if pb is not None and buckets is not None:
            p = self.hylorada.position_scale_for(pb, buckets)            # [B or 1, T]
            if p.dim() < x.dim() - 1:                                    # x: [N, d] with flat tokens
                p = p.reshape(-1)
        return self.hylorada(x, self.base_layer.weight, self.base_layer.bias, p)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.hylorada.rank}, scaling={self.hylorada.scaling:.4g}"
