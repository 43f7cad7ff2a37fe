"""How many input-embedding rows does training change? (issue 21, item 3: store the full trained table or only the
changed rows, measured on SmolLM2's 49152 x 576 table.)

    python -m bench.method.embed_rows [--base smollm2-135m-instruct] [--seq 256] [--batch 2] [--steps 4]

Runs `hylorada train`'s loop (hylorada.train.loop.train: AdamW, no weight decay) with train_embeddings on real text
(this repository's docs, tokenized by the base's own tokenizer), twice:
  tied     the base as it is: SmolLM2 ties lm_head to embed_tokens, so the table is also the output projection
  untied   the same weights with the output projection a separate, frozen copy (tie_word_embeddings false)
and reads the trained table from the native checkpoint. Reported per run: the rows that differ from the base's, the
distinct token ids in the batches trained on, and the bytes per adapter of the changed rows (int64 ids + float32 rows,
what `hylorada export` writes) against the full float32 table. Writes bench/results/embed_rows.json; the last line
printed is the JSON summary.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.compare.adapters import resolve_base

RESULTS = Path(__file__).resolve().parents[1] / "results"
DOCS = Path(__file__).resolve().parents[2] / "docs"


def untied_copy(base: Path, out: Path) -> Path:
    """The base with lm_head a separate copy of embed_tokens (same logits, only the input table trains)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def run_one(base: Path, data: Path, work: Path, seq: int, batch: int, steps: int) -> dict:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from hylorada import HyLoRADAConfig
    from hylorada.format.base import read_base_tensors
    from hylorada.train.data import batch_indices, load_blocks
    from hylorada.train.loop import train
    cfg = HyLoRADAConfig(lora_rank=8, train_embeddings=True, target_modules=("q_proj", "v_proj"))
    t0 = time.perf_counter()
    res = train(base, data, work, cfg, seq_len=seq, steps=steps, batch_size=batch, lr=2e-4, log_every=10 ** 6,
                progress=False, log=lambda *_: None)
    seconds = time.perf_counter() - t0
    trained = load_file(Path(res["checkpoint"]) / "adapter" / "hylorada_state.safetensors")
    key = next(k for k in trained if k.endswith("embed_tokens.weight"))
    table = trained[key].float()
    original = read_base_tensors(base, ["model.embed_tokens.weight"])["model.embed_tokens.weight"].float()
    changed = int((table != original).any(dim=1).sum())
    blocks = load_blocks(data, AutoTokenizer.from_pretrained(base), seq)       # the loop's own batches, step by step
    seen = torch.unique(torch.cat([blocks[batch_indices(s, blocks.shape[0], batch)].flatten() for s in range(steps)]))
    vocab, hidden = table.shape
    return {"rows_changed": changed, "distinct_ids_trained_on": int(seen.numel()), "vocab": vocab, "hidden": hidden,
            "changed_rows_bytes": changed * (8 + hidden * 4), "full_table_bytes": vocab * hidden * 4,
            "train_seconds": round(seconds, 1), "exported": res["adapter"] is not None,
            "export_note": res["export_note"].split(" (")[0].split(" to ")[0]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="smollm2-135m-instruct")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--out", default=str(RESULTS / "embed_rows.json"))
    a = p.parse_args(argv)
    base = resolve_base(a.base)[0]
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        data = td / "docs.txt"
        data.write_text("\n\n".join(f.read_text() for f in sorted(DOCS.glob("*.md"))))
        runs = {}
        for name, b in (("tied", base), ("untied", untied_copy(base, td / "untied"))):
            print(f"training {name} ({a.steps} steps of {a.batch} x {a.seq} tokens) ...", flush=True)
            runs[name] = run_one(b, data, td / f"run-{name}", a.seq, a.batch, a.steps)
            print(f"  {name}: {runs[name]['rows_changed']} of {runs[name]['vocab']} rows changed", flush=True)
    out = {"command": f"python -m bench.method.embed_rows --base {a.base} --seq {a.seq} --batch {a.batch} "
                      f"--steps {a.steps}", "runs": runs,
           "reading": "tied: every row moves (the output projection's gradient reaches every vocabulary row), so an "
                      "adapter would carry the full table and a per-adapter output projection: refused, merge instead. "
                      "untied: only rows of ids in the text change; export stores those (ids + rows)."}
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    summary = {n: {k: r[k] for k in ("rows_changed", "changed_rows_bytes", "full_table_bytes")} for n, r in runs.items()}
    print(json.dumps(summary))
    return out


if __name__ == "__main__":
    main()
