"""HyLoRADA: rsLoRA + gated DoRA blend + per-token position scale, with long-context extensions."""
from .config import ConfigError, HyLoRADAConfig

__all__ = ["HyLoRADAConfig", "ConfigError", "HyLoRADAModel", "HyLoRADAUnified", "PositionBias"]


def __getattr__(name):  # keep `import hylorada` light (no torch-heavy imports until used)
    if name == "HyLoRADAModel":
        from hylorada.method.model import HyLoRADAModel
        return HyLoRADAModel
    if name in ("HyLoRADAUnified", "PositionBias"):
        from hylorada.method import layers
        return getattr(layers, name)
    raise AttributeError(name)
