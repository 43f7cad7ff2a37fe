"""Helpers shared by tests (import as `from tests.helpers import ...`)."""
import torch


def randomize_adapter(model, seed: int = 0, scale: float = 0.05) -> None:
    """Give every adapter tensor a non-trivial value (fresh adapters are the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.adapter_state_dict().items():
            if name.endswith("lora_B") or name == "position_bias.bias":
                p.copy_(torch.randn(p.shape, generator=g) * (scale if name.endswith("lora_B") else 1.0))
            elif name.endswith(".magnitude"):
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(("magnitude_gate", "residual_weight", "position_scale")):
                p.copy_(torch.randn((), generator=g))
