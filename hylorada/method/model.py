"""HyLoRADAModel: a transformers Llama-family causal LM with HyLoRADA layers injected.

    model = HyLoRADAModel.from_pretrained("path/to/base", HyLoRADAConfig(lora_rank=8))
    out = model(input_ids=ids, labels=ids); out.loss.backward()
    model.save("ckpt/"); model = HyLoRADAModel.load("ckpt/", base_dir="path/to/base")

The base is frozen; each target nn.Linear (q/k/v/o/gate/up/down by default) becomes a
HyLoRADALinear; one PositionBias is shared by all layers and fed each token's RoPE position.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hylorada.format.checkpoint import BASE_FILE, STATE_FILE, load_adapter_state, read_checkpoint, save_checkpoint
from hylorada.format.base import base_shape_hash
from hylorada.config import HyLoRADAConfig
from hylorada.method.extensions import install_extensions
from hylorada.method.rope import apply_rope_scaling
from hylorada.method.layers import HyLoRADALinear, HyLoRADAUnified, PositionBias
from hylorada.method.positions import PositionContext, track_positions


def _target_linears(model: nn.Module, targets: tuple[str, ...]) -> list[tuple[str, nn.Linear]]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets and ".layers." in f".{name}"]


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


class HyLoRADAModel(nn.Module):
    def __init__(self, base_model: nn.Module, config: HyLoRADAConfig):
        super().__init__()
        self.config = config
        self.base = base_model
        for p in self.base.parameters():
            p.requires_grad_(False)
        found = _target_linears(self.base, config.target_modules)
        if not found:
            raise ValueError(f"no linear layer named any of {list(config.target_modules)} inside the decoder layers "
                             f"of {type(base_model).__name__}")
        present = {n.rsplit(".", 1)[-1] for n, _ in found}
        missing = [t for t in config.target_modules if t not in present]
        if missing:
            raise ValueError(f"target_modules {missing} not found in {type(base_model).__name__} "
                             f"(its projections: {sorted(present)})")
        self.position_context = PositionContext(config.num_position_buckets, config.bucket_max_position)
        self.position_bias = (PositionBias(config.num_position_buckets, config.bucket_max_position)
                              if config.position_bias_enabled else None)
        self._hook = track_positions(self.base, self.position_context)
        gen = torch.Generator().manual_seed(config.seed)
        for name, linear in found:
            adapter = HyLoRADAUnified(
                linear.weight, config.lora_rank, config.lora_alpha, use_rslora=config.use_rslora,
                dropout=config.lora_dropout, train_magnitude=config.use_dora_magnitude,
                magnitude_gate_init=config.magnitude_gate_init, residual_weight_init=config.residual_weight_init,
                position_scale_init=config.position_scale_init, generator=gen)
            adapter.to(linear.weight.device)
            if not config.position_bias_enabled:
                adapter.position_scale.requires_grad_(False)
            _set_submodule(self.base, name, HyLoRADALinear(linear, adapter, self.position_bias, self.position_context))
        if self.position_bias is not None:
            self.position_bias.to(found[0][1].weight.device)
        install_extensions(self)          # long-context parts: DAA, landmarks, trainable embeddings/norms

    # --- construction ------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, base_dir: str | Path, config: HyLoRADAConfig, dtype: torch.dtype = torch.float32,
                        **kwargs) -> "HyLoRADAModel":
        """Load the base from a local folder (RoPE scaling from `config` applied before construction)."""
        from transformers import AutoConfig, AutoModelForCausalLM

        hf_config = AutoConfig.from_pretrained(base_dir)
        apply_rope_scaling(hf_config, config)
        base = AutoModelForCausalLM.from_pretrained(base_dir, config=hf_config, dtype=dtype, **kwargs)
        model = cls(base, config)
        model.base_dir = str(base_dir)
        return model

    # --- running -----------------------------------------------------------------
    def forward(self, *args, **kwargs):
        return self.base(*args, **kwargs)

    @torch.no_grad()
    def generate(self, *args, **kwargs):
        return self.base.generate(*args, **kwargs)

    def hylorada_layers(self) -> dict[str, HyLoRADALinear]:
        return {n: m for n, m in self.base.named_modules() if isinstance(m, HyLoRADALinear)}

    # --- parameters ----------------------------------------------------------------
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable tensors + magnitude_init, keyed by their names inside the HF model (see docs/format.md)."""
        state = {n: p for n, p in self.base.named_parameters() if p.requires_grad}
        state.update({n: b for n, b in self.base.named_buffers() if n.endswith("hylorada.magnitude_init")})
        for n, p in self.base.named_parameters():          # frozen-by-config adapter tensors are still adapter state
            if ".hylorada." in n:
                state[n] = p
        if self.position_bias is not None:
            state["position_bias.bias"] = self.position_bias.bias
        return state

    def trainable_parameters(self) -> dict[str, int]:
        """Trainable parameter count per component, plus totals."""
        groups = {"lora": ("lora_A", "lora_B"), "dora": ("magnitude", "magnitude_gate", "residual_weight"),
                  "position": ("position_scale",), "daa": (".daa.",), "landmarks": (".landmark.",)}
        counts = {k: 0 for k in (*groups, "embeddings", "norms")}
        for n, p in self.named_parameters():
            if not p.requires_grad:
                continue
            leaf = n.rsplit(".", 1)[-1]
            if n == "position_bias.bias":
                key = "position"
            elif ".hylorada." in n:
                key = next(k for k, names in groups.items() if leaf in names)
            elif ".daa." in n:
                key = "daa"
            elif ".landmark." in n:
                key = "landmarks"
            elif "norm" in n:
                key = "norms"
            else:
                key = "embeddings"
            counts[key] += p.numel()
        counts["total_trainable"] = sum(counts.values())
        counts["base_total"] = sum(p.numel() for n, p in self.base.named_parameters() if ".hylorada." not in n)
        return counts

    # --- checkpoint ------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> Path:
        return save_checkpoint(self, out_dir)

    @classmethod
    def load(cls, ckpt_dir: str | Path, base_dir: str | Path | None = None, dtype: torch.dtype = torch.float32) -> "HyLoRADAModel":
        return load_checkpoint(ckpt_dir, base_dir=base_dir, dtype=dtype)


def load_checkpoint(ckpt_dir: str | Path, base_dir: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """Rebuild the base (from `base_dir` or the recorded path) and the adapter, then load every tensor strictly."""
    config, state, ident = read_checkpoint(ckpt_dir)
    base_dir = base_dir or ident.get("base_model_name_or_path")
    if not base_dir:
        raise ValueError(f"{ckpt_dir}: no base recorded; pass base_dir")
    model = HyLoRADAModel.from_pretrained(base_dir, config, dtype=dtype)
    if base_shape_hash(model.base.config) != ident.get("shape_hash"):
        raise ValueError(f"{ckpt_dir}/{BASE_FILE}: made for a base with shape hash {ident.get('shape_hash')}, "
                         f"but {base_dir} has {base_shape_hash(model.base.config)}")
    load_adapter_state(model, state, source=str(Path(ckpt_dir) / STATE_FILE))
    return model
