"""Trainable parameters per method, counted from the code (issue 23: the seeds' "Params/Layer" table, recomputed for
SmolLM2-135M and for a Llama-3-8B shape).

    python -m bench.method.param_counts [--rank 8] [--targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]

Every model is built on the meta device from its config alone (no weights are read, so the 8B shape costs nothing):
  LoRA, rsLoRA, DoRA   PEFT's own models (get_peft_model; the scale does not change the count)
  HyLoRADA variants    HyLoRADAModel with the parts each variant enables, counted by trainable_parameters()
"Per layer" is the total without the parts shared by the whole model (the position bias's buckets, embeddings,
the final norm) divided by the decoder layers. Writes bench/results/param_counts.json and .md; the last line printed
is the JSON path.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Llama-3-8B's published shape (config.json of meta-llama/Meta-Llama-3-8B)
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, tie_word_embeddings=False)
HYLORADA = {
    "HyLoRADA (blend only)": dict(position_bias_enabled=False),
    "HyLoRADA + position scale": dict(),
    "HyLoRADA + DAA": dict(daa_enabled=True),
    "HyLoRADA + landmarks (K=8)": dict(landmark_enabled=True, num_landmarks=8),
    "HyLoRADA + norms": dict(train_norms=True),
    "HyLoRADA + embeddings + norms (LongLoRA's)": dict(train_embeddings=True, train_norms=True),
}


def meta_model(config):
    import torch
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def peft_counts(config, rank: int, targets, dora: bool) -> dict:
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(meta_model(config), LoraConfig(r=rank, lora_alpha=2 * rank, use_dora=dora,
                                                          target_modules=list(targets)))
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total_trainable": total, "per_layer": total / config.num_hidden_layers}


def hylorada_counts(config, rank: int, targets, extra: dict) -> dict:
    from hylorada import HyLoRADAConfig, HyLoRADAModel
    cfg = HyLoRADAConfig(lora_rank=rank, target_modules=tuple(targets), **extra)
    counts = HyLoRADAModel(meta_model(config), cfg).trainable_parameters()
    shared = counts.get("embeddings", 0) + (cfg.num_position_buckets if cfg.position_bias_enabled else 0)
    shared += config.hidden_size if cfg.train_norms else 0          # the final norm
    per_layer = (counts["total_trainable"] - shared) / config.num_hidden_layers
    return {k: v for k, v in counts.items() if v} | {"per_layer": per_layer, "shared": shared}


def table(config, rank: int, targets) -> dict:
    rows = {"LoRA (alpha/r)": peft_counts(config, rank, targets, dora=False)}
    rows["rsLoRA (alpha/sqrt r)"] = rows["LoRA (alpha/r)"]
    rows["DoRA (PEFT)"] = peft_counts(config, rank, targets, dora=True)
    for name, extra in HYLORADA.items():
        rows[name] = hylorada_counts(config, rank, targets, extra)
    base = sum(p.numel() for p in meta_model(config).parameters())
    return {"base_parameters": base, "rows": rows}


def markdown(results: dict, rank: int, targets) -> str:
    out = [f"# Trainable parameters per method (rank {rank}, targets {', '.join(targets)})", "",
           "Counted from the code on meta-device models (`python -m bench.method.param_counts`). The HyLoRADA rows "
           "after '+ position scale' keep it on (the default); 'shared' is what the whole model has once: the "
           "position bias's 64 buckets, the final norm, the input embeddings (tied to the output projection on "
           "SmolLM2, a separate table on the 8B shape, whose lm_head stays frozen).", ""]
    for model, res in results.items():
        base = res["base_parameters"]
        out += [f"## {model} ({base / 1e6:.1f}M parameters)", "",
                "| method | per decoder layer | shared (whole model) | total trainable | % of base |", "|---|---:|---:|---:|---:|"]
        for name, r in res["rows"].items():
            out.append(f"| {name} | {r['per_layer']:,.0f} | {r.get('shared', 0):,} | {r['total_trainable']:,} | "
                       f"{100 * r['total_trainable'] / base:.2f} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--targets", default=",".join(PROJECTIONS))
    p.add_argument("--base", default="smollm2-135m-instruct", help="the small real base (its config only)")
    p.add_argument("--out", default=str(RESULTS / "param_counts"))
    a = p.parse_args(argv)
    from transformers import AutoConfig, LlamaConfig

    from bench.compare.adapters import resolve_base
    targets = a.targets.split(",")
    configs = {"SmolLM2-135M": AutoConfig.from_pretrained(resolve_base(a.base)[0]), "Llama-3-8B shape": LlamaConfig(**LLAMA_8B)}
    results = {name: table(cfg, a.rank, targets) for name, cfg in configs.items()}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"command": f"python -m bench.method.param_counts --rank {a.rank} --targets {a.targets}",
           "rank": a.rank, "targets": targets, "models": results}
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(results, a.rank, targets) + "\n")
    print(out.with_suffix(".md").read_text())
    print(out.with_suffix(".json"))
    return str(out.with_suffix(".json"))


if __name__ == "__main__":
    main()
