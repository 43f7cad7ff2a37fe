"""`hylorada` command: one subcommand per module, each module exposing
`add_arguments(parser)` and `run(args) -> int`. Modules are imported only when used."""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    # name: (module, one-line help)
    "train": ("hylorada.train.cli", "train an adapter on a text/jsonl file (progress, checkpoints, resume)"),
    "export": ("hylorada.commands.export", "write the served form (PEFT LoRA + hylorada side file) from a checkpoint"),
    "convert-peft": ("hylorada.commands.convert_peft", "convert a PEFT LoRA / rsLoRA / DoRA adapter to the served form"),
    "merge": ("hylorada.commands.merge", "merge a static served adapter into a standalone transformers model"),
    "inspect": ("hylorada.commands.inspect", "validate a served adapter and print a summary (non-zero exit on problems)"),
    "base": ("hylorada.commands.base", "fetch and convert a known small pretrained base (SmolLM2-135M) to a cached model folder"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand listed; only `only`'s module imported (all of them when None), so a command pays for
    its own imports only (torch, transformers, safetensors take seconds here)."""
    parser = argparse.ArgumentParser(prog="hylorada", description="HyLoRADA long-context adapters: train, export, "
                                     "convert, merge, inspect, and fetch a small base.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if only is None or name == only:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except OSError as e:                   # disk full, permissions, a vanished path: one line, not a traceback
        where = f": {e.filename}" if e.filename else ""
        print(f"hylorada {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
