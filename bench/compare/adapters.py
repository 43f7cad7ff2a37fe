"""The benchmark's model and adapters, built locally and seeded (cached under .cache/bench/).

    python -m bench.compare.adapters --num 256          # builds what bench.compare needs, prints the folders

- base: `--base tiny-small` (default), hylorada.tiny "small" (26M parameters: hidden 512, 8 layers, GQA, vocab 2048);
  `--base smollm2-135m-instruct` (or any name hylorada.bases knows), the real base, fetched once by
  hylorada.bases.ensure_base (a float32 folder; each system runs it in --dtype); or a model folder. Every base
  other than tiny-small gets its own cache sub-folder (.cache/bench/{name}/).
- peft/lora-{k}: PEFT rsLoRA r16 on all seven projections, A and B drawn from a seeded normal (B non-zero so
  every adapter changes the output). What a user hands to upstream vLLM or to a PEFT server.
- served-lora/lora-{k}: the same adapters converted by `hylorada.commands.convert_peft.convert_peft` (the served form, scale 1).
- hylorada/hyl-{k}: HyLoRADA adapters with dynamic parts (c per layer, position bias), exported from a
  HyLoRADAModel by `hylorada.commands.export` when that module exists; without it, none are built (reported).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CACHE = Path(".cache/bench")
TINY = "tiny-small"


def build_base(cache: Path = CACHE) -> Path:
    from hylorada.tiny import build_tiny_llama
    return build_tiny_llama(cache.resolve() / "small-llama", "small")


def resolve_base(base: str = TINY, cache: Path = CACHE) -> tuple[Path, Path]:
    """(base model folder, the cache folder for its adapters) for `--base`: tiny-small, a name hylorada.bases
    knows (fetched and converted once, float32), or an existing model folder."""
    from hylorada import bases
    if base == TINY:
        return build_base(cache), cache
    if base in bases.KNOWN:
        return bases.ensure_base(base, dtype="float32"), cache / base
    folder = Path(base)
    if not (folder / "config.json").is_file():
        raise SystemExit(f"--base {base!r}: neither {TINY}, a known base ({', '.join(sorted(bases.KNOWN))}) nor a "
                         "model folder with a config.json")
    return folder.resolve(), cache / folder.resolve().name


def _stamp_ok(folder: Path, want: dict) -> bool:
    s = folder / "bench_stamp.json"
    return s.is_file() and json.loads(s.read_text()) == want


def build_peft(base: Path, n: int, cache: Path = CACHE, rank: int = 16, alpha: float = 16.0) -> list[Path]:
    """n PEFT rsLoRA adapters (seed k for adapter k); reused when already built with the same settings."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    root = cache / "peft"
    paths = [root / f"lora-{k}" for k in range(n)]
    want = lambda k: {"rank": rank, "alpha": alpha, "seed": k, "base": str(base)}  # noqa: E731
    todo = [k for k in range(n) if not _stamp_ok(paths[k], want(k))]
    if not todo:
        return paths
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, use_rslora=True, target_modules=list(PROJECTIONS), lora_dropout=0.0,
                     task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    params = [(name, p) for name, p in peft_model.named_parameters() if "lora_" in name]
    for k in todo:
        g = torch.Generator().manual_seed(10_000 + k)
        with torch.no_grad():
            for name, p in params:   # A ~ N(0, 1/d_in), B ~ N(0, 0.02^2): a clearly non-zero delta
                std = p.shape[1] ** -0.5 if "lora_A" in name else 0.02
                p.copy_(torch.randn(p.shape, generator=g) * std)
        peft_model.save_pretrained(str(paths[k]))
        (paths[k] / "bench_stamp.json").write_text(json.dumps(want(k)))
    return paths


def build_served_lora(base: Path, peft_paths: list[Path], cache: Path = CACHE) -> list[Path]:
    """The same adapters in the served form (kind 'lora'), converted with hylorada.commands.convert_peft."""
    import shutil

    from hylorada.commands.convert_peft import convert_peft
    out = []
    for p in peft_paths:
        dst = cache / "served-lora" / p.name
        want = {"from": str(p), "stamp": (p / "bench_stamp.json").read_text()}
        if not _stamp_ok(dst, want):
            if dst.exists():
                shutil.rmtree(dst)
            convert_peft(p, dst, base)
            (dst / "bench_stamp.json").write_text(json.dumps(want))
        out.append(dst)
    return out


def build_hylorada(base: Path, n: int, cache: Path = CACHE, rank: int = 16) -> list[Path]:
    """n HyLoRADA adapters with c and position bias, seeded, through hylorada.commands.export."""
    import torch

    from hylorada.commands import export as hexport

    from hylorada import HyLoRADAConfig, HyLoRADAModel
    from hylorada.format.checkpoint import save_checkpoint
    root = cache / "hylorada"
    paths = [root / f"hyl-{k}" for k in range(n)]
    want = lambda k: {"rank": rank, "seed": k, "base": str(base), "export": "v1"}  # noqa: E731
    todo = [k for k in range(n) if not _stamp_ok(paths[k], want(k))]
    if not todo:
        return paths
    import shutil
    for k in todo:
        cfg = HyLoRADAConfig(lora_rank=rank, lora_alpha=16.0, use_rslora=True, seed=k)
        model = HyLoRADAModel.from_pretrained(base, cfg)
        g = torch.Generator().manual_seed(20_000 + k)
        with torch.no_grad():   # every trainable tensor random: c != 1, p(pos) != 1, B != 0
            for name, p in model.named_parameters():
                if p.requires_grad:
                    std = 0.02 if p.ndim == 2 else 0.5
                    p.add_(torch.randn(p.shape, generator=g) * std)
        ckpt = cache / "hylorada-ckpt" / f"hyl-{k}"
        for d in (ckpt, paths[k]):
            if d.exists():
                shutil.rmtree(d)
        save_checkpoint(model, ckpt)
        hexport.export(ckpt, paths[k], base)
        (paths[k] / "bench_stamp.json").write_text(json.dumps(want(k)))
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.compare.adapters", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=8, help="PEFT / served-LoRA adapters")
    ap.add_argument("--num-hylorada", type=int, default=8)
    ap.add_argument("--cache", default=str(CACHE))
    ap.add_argument("--base", default=TINY, help=f"{TINY} (default), a known base name, or a model folder")
    a = ap.parse_args(argv)
    base, cache = resolve_base(a.base, Path(a.cache))
    peft_paths = build_peft(base, a.num, cache)
    served = build_served_lora(base, peft_paths[:a.num_hylorada], cache)
    hyl = build_hylorada(base, a.num_hylorada, cache)
    print(json.dumps({"base": str(base), "peft": len(peft_paths), "served_lora": len(served),
                      "hylorada": len(hyl)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
