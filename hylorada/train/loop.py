"""`hylorada train`: fine-tune a HyLoRADA adapter on a .txt/.jsonl file.

    hylorada train --base MODEL_DIR --data FILE --out DIR [--seq-len 512 --steps 200 --lr 2e-4 --batch-size 4
                   --config cfg.json --save-every 50 --log-every 10 --resume]

Progress bar (tqdm), a JSON loss line every --log-every steps (also appended to OUT/train_log.jsonl),
crash-safe checkpoints under OUT/checkpoints/ (train_state.py) and --resume from the newest one
(same batches, optimizer moments and RNG as an uninterrupted run). CUDA: float32 master weights with
bf16 autocast; CPU: float32. At the end the adapter is exported to OUT/adapter (hylorada.commands.export) when
the export module exists and accepts it; otherwise the native checkpoint is left and the reason printed.
"""
from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from hylorada.config import HyLoRADAConfig
from hylorada.train.data import batch_indices, load_blocks
from hylorada.train.state import (latest_checkpoint, load_optimizer_tensors, read_training_checkpoint, save_training_checkpoint)


def lr_at(step: int, lr: float, steps: int) -> float:
    """Linear warm-up over the first min(20, steps/10) steps, then cosine decay to lr/10 (a pure function of step)."""
    warm = max(1, min(20, steps // 10))
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(base: str | Path, data: str | Path, out: str | Path, config: HyLoRADAConfig | None = None, *,
          seq_len: int = 512, steps: int = 200, lr: float = 2e-4, batch_size: int = 4, save_every: int = 50,
          log_every: int = 10, resume: bool = False, seed: int = 0, device: str = "auto", keep: int = 2,
          export: bool = True, progress: bool = True, log=print) -> dict:
    """Run training; returns {"step", "losses", "checkpoint", "adapter" (path or None), "export_note"}."""
    from transformers import AutoTokenizer

    from hylorada.format.checkpoint import load_adapter_state, read_checkpoint
    from hylorada.method.model import HyLoRADAModel

    out = Path(out)
    ck_root = out / "checkpoints"
    start, losses, opt_tensors = 0, [], None
    prev = latest_checkpoint(ck_root) if resume else None
    if resume and prev is None:
        log(f"--resume: no checkpoint under {ck_root}; starting at step 0")
    if prev is not None:
        ck_config, adapter_state, _ = read_checkpoint(prev / "adapter")
        if config is not None and config.to_dict() != ck_config.to_dict():
            log(f"--resume: using the checkpoint's config ({prev / 'adapter'}), not the one given")
        config = ck_config
        tstate, opt_tensors = read_training_checkpoint(prev)
        start, losses = int(tstate["step"]), list(tstate.get("losses", []))
    elif (ck_root.exists() and any(ck_root.iterdir())):
        raise FileExistsError(f"{ck_root} already holds checkpoints: pass --resume, or choose a new --out")
    config = config or HyLoRADAConfig()

    dev = pick_device(device)
    torch.manual_seed(seed)
    model = HyLoRADAModel.from_pretrained(base, config, dtype=torch.float32).to(dev)
    if prev is not None:
        load_adapter_state(model, adapter_state, source=str(prev / "adapter"))
    params = {n: p for n, p in model.base.named_parameters() if p.requires_grad}
    if model.position_bias is not None:
        params["position_bias.bias"] = model.position_bias.bias
    names = {id(p): n for n, p in params.items()}
    optimizer = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=0.0)
    if opt_tensors is not None:
        load_optimizer_tensors(optimizer, params, opt_tensors)
        torch.set_rng_state(opt_tensors["__rng__"])

    tok = AutoTokenizer.from_pretrained(base)
    blocks = load_blocks(data, tok, seq_len)
    counts = model.trainable_parameters()
    log(f"train: {blocks.shape[0]} blocks of {seq_len} tokens, {counts['total_trainable']:,} trainable of "
        f"{counts['base_total']:,} base parameters, device {dev}, steps {start}->{steps}")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()
    meta = {"seed": seed, "batch_size": batch_size, "seq_len": seq_len, "lr": lr, "steps": steps}

    def checkpoint(step):
        return save_training_checkpoint(ck_root, step, model, optimizer, names, meta | {"losses": losses}, keep=keep)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
    model.train()
    window, t0, last = [], time.perf_counter(), prev
    for step in range(start, steps):
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, lr, steps)
        batch = blocks[batch_indices(step, blocks.shape[0], batch_size, seed)].to(dev)
        with autocast:
            loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        optimizer.step()
        value = float(loss.detach())
        losses.append(value)
        window.append(value)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
        done = step + 1
        if done % log_every == 0 or done == steps:
            dt = time.perf_counter() - t0
            rec = {"step": done, "loss": sum(window) / len(window), "lr": lr_at(step, lr, steps),
                   "tokens_per_s": len(window) * batch.numel() / max(dt, 1e-9)}
            log(json.dumps(rec))
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "train_log.jsonl", "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            window, t0 = [], time.perf_counter()
        if done % save_every == 0 or done == steps:
            last = checkpoint(done)
    if bar is not None:
        bar.close()
    if last is None:                                     # resumed at (or past) the final step
        last = latest_checkpoint(ck_root)
    result = {"step": max(start, steps), "losses": losses, "checkpoint": str(last), "adapter": None, "export_note": ""}
    if export and last is not None:
        result.update(export_adapter(last / "adapter", out, base, log))
    result["model"] = model
    return result


def export_adapter(native: Path, out: Path, base, log=print) -> dict:
    """Export the native checkpoint's served form to OUT/adapter (OUT/adapter-step-N if that exists)."""
    try:
        from hylorada.commands.export import export as export_fn
    except ModuleNotFoundError:
        note = f"hylorada.commands.export is not available; the native checkpoint is at {native}"
        log(note)
        return {"export_note": note}
    target = out / "adapter"
    if target.exists() and any(target.iterdir()):
        target = out / f"adapter-{native.parent.name}"
    try:
        path = export_fn(native, target, base_dir=base)
    except Exception as e:                               # e.g. trained embeddings cannot be served as LoRA
        note = f"export refused ({e}); the native checkpoint is at {native}"
        log(note)
        return {"export_note": note}
    log(f"exported the served adapter to {path}")
    return {"adapter": str(path), "export_note": f"exported to {path}"}
