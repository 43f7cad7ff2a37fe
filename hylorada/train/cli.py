"""`hylorada train` on the command line: options -> train.loop.train, one clear error line on bad input.

    hylorada train --base MODEL_DIR --data FILE --out DIR [--seq-len 512 --steps 200 --lr 2e-4 --batch-size 4
                   --config cfg.json --save-every 50 --log-every 10 --resume]
"""
from __future__ import annotations

import json
from pathlib import Path

from hylorada.config import ConfigError, HyLoRADAConfig
from hylorada.train.data import DataError
from hylorada.train.loop import train


def add_arguments(p) -> None:
    p.add_argument("--base", required=True, metavar="MODEL_DIR", help="base model folder (transformers format)")
    p.add_argument("--data", required=True, metavar="FILE", help=".txt (one document) or .jsonl with a \"text\" field")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (checkpoints/, train_log.jsonl, adapter/)")
    p.add_argument("--config", default=None, metavar="CFG_JSON", help="HyLoRADAConfig as JSON (default: the defaults)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=200, help="total optimizer steps (a resumed run continues to this)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--keep-checkpoints", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint under OUT/checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--no-export", action="store_true", help="leave only the native checkpoint")


def run(args) -> int:
    try:
        config = HyLoRADAConfig.from_json(Path(args.config)) if args.config else None
        res = train(args.base, args.data, args.out, config, seq_len=args.seq_len, steps=args.steps, lr=args.lr,
                    batch_size=args.batch_size, save_every=args.save_every, log_every=args.log_every,
                    resume=args.resume, seed=args.seed, device=args.device, keep=args.keep_checkpoints,
                    export=not args.no_export)
    except (ConfigError, DataError, FileExistsError, FileNotFoundError) as e:
        print(f"hylorada train: error: {e}")
        return 1
    print(json.dumps({"step": res["step"], "final_loss": res["losses"][-1] if res["losses"] else None,
                      "checkpoint": res["checkpoint"], "adapter": res["adapter"], "export": res["export_note"]}))
    return 0
