"""Native (training) checkpoint: config + adapter tensors in safetensors, written atomically.

dir/hylorada_config.json          HyLoRADAConfig
dir/hylorada_state.safetensors    HyLoRADAModel.adapter_state_dict() (names inside the HF model)
dir/hylorada_base.json            which base it was trained on (name, architecture, shape hash)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hylorada.format.atomic import atomic_dir
from hylorada.format.base import base_identity
from hylorada.config import HyLoRADAConfig

CONFIG_FILE, STATE_FILE, BASE_FILE = "hylorada_config.json", "hylorada_state.safetensors", "hylorada_base.json"


def save_checkpoint(model, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write to a hidden sibling, fsync, then rename over `out_dir` (atomic_dir): a crash never leaves a half checkpoint."""
    out = Path(out_dir)
    with atomic_dir(out, replace=True) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.adapter_state_dict().items()}
        save_file(state, str(tmp / STATE_FILE))
        model.config.to_json(tmp / CONFIG_FILE)
        ident = base_identity(model.base.config, getattr(model, "base_dir", None))
        (tmp / BASE_FILE).write_text(json.dumps(ident | (extra or {}), indent=2) + "\n")
    return out


def read_checkpoint(ckpt_dir: str | Path) -> tuple[HyLoRADAConfig, dict[str, torch.Tensor], dict]:
    d = Path(ckpt_dir)
    for f in (CONFIG_FILE, STATE_FILE, BASE_FILE):
        if not (d / f).is_file():
            raise FileNotFoundError(f"{d / f}: missing (not a HyLoRADA checkpoint folder)")
    return HyLoRADAConfig.from_json(d / CONFIG_FILE), load_file(str(d / STATE_FILE)), json.loads((d / BASE_FILE).read_text())


def load_adapter_state(model, state: dict[str, torch.Tensor], source: str = "state") -> None:
    own = model.adapter_state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [f"{k}: shape {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own.keys() & state.keys()
           if state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise ValueError(f"{source}: does not fit this model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, wrong shapes {bad[:5]}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))
