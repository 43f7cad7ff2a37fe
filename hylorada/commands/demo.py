"""Offline tour of the method on the embedded tiny model: `python -m hylorada.commands.demo`.

Builds a seeded tiny Llama (cached under .cache/), wraps it with HyLoRADA, fine-tunes for a
few dozen steps on a synthetic sentence, and shows the loss falling and the generations
changing. The serving demo (`hylorada-serve --demo`) is the main job; this one needs no engine.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=".cache/hylorada", help="where the tiny base is built (once)")
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from hylorada import HyLoRADAConfig, HyLoRADAModel
    from hylorada.tiny import build_tiny_llama

    torch.manual_seed(0)
    base_dir = build_tiny_llama(Path(args.cache) / "tiny-llama", "tiny")
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = HyLoRADAModel.from_pretrained(base_dir, HyLoRADAConfig(lora_rank=8, lora_alpha=16.0))
    print(f"base: {base_dir}\ntrainable parameters: {model.trainable_parameters()}")
    prompt = "the secret passkey is"
    target = "the secret passkey is seven seven three. remember the passkey."
    ids = tok(prompt, return_tensors="pt").input_ids

    def show(tag):
        out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        print(f"{tag:>7}: {tok.decode(out[0])!r}")

    show("before")
    data = tok([target] * 4, return_tensors="pt").input_ids
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(1, args.steps + 1):
        loss = model(input_ids=data, labels=data).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % 10 == 0:
            print(f"step {step:3d}  loss {loss.item():.3f}")
    show("after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
