"""Crash-safe training checkpoints: adapter + optimizer + step, published by one rename.

    OUT/checkpoints/step-00000050/
        adapter/                   a native HyLoRADA checkpoint (hylorada.format.checkpoint.save_checkpoint)
        optimizer.safetensors      every optimizer state tensor, key "<param name>/<state key>", + "__rng__"
        trainer_state.json         {"step", "seed", "batch_size", "seq_len", "lr", "losses": [...]}

Everything is written into a hidden sibling `.step-00000050.tmp-XXXX` and renamed into place, so a crash
at any point leaves the previous checkpoints untouched; hidden leftovers are ignored and cleaned up.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hylorada.format.atomic import atomic_dir

STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under root, oldest first (hidden temporaries are never listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    ck = list_checkpoints(root)
    return ck[-1][1] if ck else None


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, torch.Tensor]:
    """Flatten optimizer.state: {"<param name>/<key>": tensor}. names: id(param) -> name."""
    out = {}
    for p, st in optimizer.state.items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            out[f"{names[id(p)]}/{k}"] = t.detach().contiguous().cpu()
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter],
                           tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of optimizer_tensors (state tensors moved to each parameter's device; `step` stays on CPU)."""
    for key, t in tensors.items():
        if key == "__rng__":
            continue
        name, k = key.rsplit("/", 1)
        if name not in params:
            raise ValueError(f"optimizer state for unknown parameter {name!r}")
        p = params[name]
        optimizer.state[p][k] = t if k == "step" else t.to(p.device)


def save_training_checkpoint(root: str | Path, step: int, model, optimizer, names: dict[int, str], state: dict,
                             keep: int = 2) -> Path:
    """Publish step-N atomically, then drop all but the newest `keep` checkpoints and stale temporaries."""
    from hylorada.format.checkpoint import save_checkpoint

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    with atomic_dir(final, replace=True) as tmp:           # same step saved again (e.g. a re-run): replaced
        save_checkpoint(model, tmp / "adapter")
        tensors = optimizer_tensors(optimizer, names)
        tensors["__rng__"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps(state | {"step": step}, indent=1) + "\n")
    for _, old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for p in root.iterdir():
        if p.name.startswith(".step-") and p.is_dir():     # temporaries of a crashed save
            shutil.rmtree(p, ignore_errors=True)
    return final


def read_training_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """-> (trainer_state.json dict, optimizer tensors incl. "__rng__")."""
    path = Path(path)
    state = json.loads((path / "trainer_state.json").read_text())
    return state, load_file(str(path / "optimizer.safetensors"))
