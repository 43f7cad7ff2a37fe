"""`sink` vs `full` attention on the real vLLM engine (HyLoRADA plugin) as the sequence length grows.

    VLLM_HOST_IP=127.0.0.1 .venv/bin/python -m bench.method.sink_vs_full [--lengths 512 1024 2048 4096 8192]

One engine on the tiny Llama (2 layers, GQA, head_dim 32; built with max_position_embeddings 16384),
two adapters exported from the same seeded HyLoRADA checkpoint that differ only in hylorada.json's
attention mode: `full`, and `sink` (--sinks first tokens + a window of --window). For each total length
L: --batch requests, each a random prompt of L - --new tokens, then --new greedy tokens (ignore EOS),
run step by step through `LLM.llm_engine` so that between steps we read vLLM's KV-cache usage gauge
(--reps runs each; best tok/s kept).

Per (mode, L): prefill tok/s (prompt tokens / time until every request has its first token), decode
tok/s (generated tokens after the first / the rest of the time), and the peak KV blocks held (gauge x
blocks) -> MiB. Full attention holds cdiv(L, block) blocks per sequence; sink frees the gap between
its sinks and its window (patches/attn_kv.py). Sink attention runs on the patches' torch reference path
(patches/attn_backend.py), full on vLLM's CPU_ATTN kernel. Writes bench/results/sink_vs_full.{json,png};
the last line printed is the JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


@dataclass
class SinkBenchConfig:
    lengths: list[int] = field(default_factory=lambda: [512, 1024, 2048, 4096, 8192])  # total tokens per sequence
    new: int = 256               # generated tokens per request (decode phase)
    reps: int = 2                # runs per (mode, length); the best tok/s and the largest KV peak are kept
    batch: int = 8               # concurrent requests per run
    sinks: int = 4               # sink tokens of the `sink` adapter
    window: int = 256            # window of the `sink` adapter
    block_size: int = 128        # vLLM KV block size (CPU default)
    chunk: int = 1024            # max_num_batched_tokens (chunked prefill)
    seed: int = 0
    work: str = "/tmp/hylorada-bench-sink"

    def __post_init__(self):
        assert self.lengths and all(L > self.new for L in self.lengths), "every length must exceed --new"
        assert self.batch >= 1 and self.sinks >= 1 and self.window >= 1 and self.block_size % 32 == 0


def build(cfg: SinkBenchConfig) -> tuple[Path, dict[str, str]]:
    """Tiny base with long positions + the two adapters (same weights, different attention mode)."""
    import torch
    from hylorada import HyLoRADAConfig, HyLoRADAModel
    from hylorada.commands.export import export
    from hylorada.tiny import TinySpec, build_tiny_llama
    work = Path(cfg.work)
    base = build_tiny_llama(work / "tiny-long", TinySpec(max_position_embeddings=16384))
    paths = {}
    for mode in ("full", "sink"):
        served = work / f"{mode}-{cfg.sinks}-{cfg.window}-{cfg.seed}"
        if (served / "hylorada.json").is_file():          # built by an earlier run with this config
            paths[mode] = str(served)
            continue
        kw = dict(attention_mode="sink", s2_sink_tokens=cfg.sinks, sink_window=cfg.window) if mode == "sink" else {}
        torch.manual_seed(cfg.seed)                       # same weights for both modes
        model = HyLoRADAModel.from_pretrained(base, HyLoRADAConfig(lora_rank=8, **kw)).eval()
        g = torch.Generator().manual_seed(cfg.seed)
        with torch.no_grad():
            for n, p in model.adapter_state_dict().items():
                if n.endswith("lora_B"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        model.save(work / f"{mode}-ckpt")
        paths[mode] = str(export(work / f"{mode}-ckpt", served, base))
    return base, paths


def kv_blocks(llm, total_blocks: int) -> float:
    usage = [m.value for m in llm.get_metrics() if m.name == "vllm:kv_cache_usage_perc"]
    return usage[0] * (total_blocks - 1) if usage else float("nan")     # the gauge excludes the null block


def run_one(llm, total_blocks: int, adapter: tuple[str, int, str], prompts: list[list[int]], new: int) -> dict:
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest
    eng, lora = llm.llm_engine, LoRARequest(*adapter)
    sp = SamplingParams(temperature=0, max_tokens=new, ignore_eos=True)
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        eng.add_request(f"{adapter[0]}-{len(p)}-{i}", {"prompt_token_ids": p}, sp, lora_request=lora)
    started, t_first, peak, steps = set(), None, 0.0, 0
    while eng.has_unfinished_requests() and steps < 100_000:
        steps += 1
        for o in eng.step():
            if o.outputs and o.outputs[0].token_ids:
                started.add(o.request_id)
        if t_first is None and len(started) == len(prompts):
            t_first = time.perf_counter()
        peak = max(peak, kv_blocks(llm, total_blocks))
    t1 = time.perf_counter()
    t_first = t_first or t1
    n_prompt = sum(len(p) for p in prompts)
    return {"prefill_tok_s": n_prompt / max(t_first - t0, 1e-9),
            "decode_tok_s": len(prompts) * (new - 1) / max(t1 - t_first, 1e-9),
            "wall_s": t1 - t0, "peak_kv_blocks": peak}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = SinkBenchConfig()
    for name in ("new", "reps", "batch", "sinks", "window", "block_size", "chunk", "seed"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    ap.add_argument("--lengths", type=int, nargs="+", default=d.lengths)
    ap.add_argument("--out", default=str(RESULTS / "sink_vs_full"))
    args = ap.parse_args(argv)
    cfg = SinkBenchConfig(**{k: v for k, v in vars(args).items() if k != "out"})
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    import torch
    from vllm import LLM
    base, paths = build(cfg)
    max_len = max(cfg.lengths)
    total_blocks = cfg.batch * -(-max_len // cfg.block_size) + 8
    llm = LLM(model=str(base), enable_lora=True, max_loras=2, max_lora_rank=8, dtype="float32", max_model_len=max_len,
              max_num_batched_tokens=cfg.chunk, max_num_seqs=max(8, cfg.batch), block_size=cfg.block_size,
              num_gpu_blocks_override=total_blocks, kv_cache_memory_bytes=1 << 30, enforce_eager=True, seed=cfg.seed,
              enable_prefix_caching=False, disable_log_stats=False)
    hf = llm.llm_engine.vllm_config.model_config.hf_config
    kv_bytes_per_block = 2 * hf.num_hidden_layers * hf.num_key_value_heads * (hf.hidden_size // hf.num_attention_heads) \
        * cfg.block_size * 4
    g = torch.Generator().manual_seed(cfg.seed)
    rows = []
    adapters = {"full": ("full", 1, paths["full"]), "sink": ("sink", 2, paths["sink"])}
    run_one(llm, total_blocks, adapters["sink"], [torch.randint(3, 500, (64,), generator=g).tolist()], 4)   # warm-up
    for L in cfg.lengths:
        prompts = [torch.randint(3, 500, (L - cfg.new,), generator=g).tolist() for _ in range(cfg.batch)]
        for mode in ("full", "sink"):
            runs = [run_one(llm, total_blocks, adapters[mode], prompts, cfg.new) for _ in range(cfg.reps)]
            r = {k: (max if k != "wall_s" else min)(x[k] for x in runs) for k in runs[0]}
            r |= {"mode": mode, "length": L, "peak_kv_mib": r["peak_kv_blocks"] * kv_bytes_per_block / 2**20,
                  "kv_blocks_per_seq": r["peak_kv_blocks"] / cfg.batch}
            rows.append(r)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    llm.llm_engine.engine_core.shutdown() if hasattr(llm.llm_engine, "engine_core") else None
    summary = {"bench": "sink_vs_full", "config": asdict(cfg), "kv_bytes_per_block": kv_bytes_per_block,
               "rows": rows, "device": "cpu (shared 2 cores)"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    plot(rows, out.with_suffix(".png"), cfg)
    last = {"bench": "sink_vs_full", "json": str(out.with_suffix(".json")), "lengths": cfg.lengths}
    for mode in ("full", "sink"):
        rs = [r for r in rows if r["mode"] == mode]
        last[mode] = {"decode_tok_s": [round(r["decode_tok_s"], 1) for r in rs],
                      "prefill_tok_s": [round(r["prefill_tok_s"], 1) for r in rs],
                      "kv_blocks_per_seq": [round(r["kv_blocks_per_seq"], 2) for r in rs]}
    print(json.dumps(last))
    return summary


def plot(rows: list[dict], path: Path, cfg: SinkBenchConfig) -> None:
    from bench.load.plots import _plt
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, key, label in zip(axes, ("decode_tok_s", "prefill_tok_s", "peak_kv_mib"),
                              ("decode tok/s", "prefill tok/s", f"peak KV cache held, {cfg.batch} seqs (MiB)")):
        for mode in ("full", "sink"):
            rs = [r for r in rows if r["mode"] == mode]
            ax.plot([r["length"] for r in rs], [r[key] for r in rs], marker="o", label=mode)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"sink ({cfg.sinks} + window {cfg.window}) vs full attention, tiny Llama, vLLM CPU, batch {cfg.batch}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
