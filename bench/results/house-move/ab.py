"""The house move's before/after check, as it was run: the pre-move code (84dc5ee) and the moved code served side by
side with upstream vLLM's LoRA server, interleaved in one run (bench.compare's interleaved rounds), so a drift of the
shared machine hits all three alike.

    git worktree add /tmp/before 84dc5ee && ln -s /tmp/before/patches /tmp/before/hylorada_patches
    PYTHONPATH=. .venv/bin/python bench/results/house-move/ab.py --reps 4     # from the repo root; writes this folder

PYTHONPATH=/tmp/before makes the 'before' server and its engine processes import the old hylorada, hylorada_serve and
hylorada_patches (the console script's own folder, not the repo, comes first in the import path). Same adapters (exported by
today's code; the format did not change), same workload as bench.compare's anchor, float32.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.compare import adapters as build, runs, servers

ROOT = Path(__file__).resolve().parents[3]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="/tmp/before", help="worktree of the pre-move commit (with the symlink)")
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--port", type=int, default=8790)
    a = ap.parse_args()
    out = Path(__file__).parent
    work = ROOT / ".cache/bench/house-move"
    base = build.build_base()
    peft = build.build_peft(base, 8)
    hyl = build.build_hylorada(base, 8)
    name = lambda i: f"a{i}"  # noqa: E731
    ad = {"peft": {name(i): p for i, p in enumerate(peft)}, "hylorada": {name(i): p for i, p in enumerate(hyl)}}
    orig = servers.spec_for

    def spec_for(system, base, port, ad, work, n_slots, n_cpu, peft_threads=2):
        if system == "hylorada-before":
            spec = orig("hylorada", base, port, ad, work, n_slots, n_cpu, peft_threads)
            spec.label, spec.env = system, spec.env | {"PYTHONPATH": a.before}
            return spec
        return orig(system, base, port, ad, work, n_slots, n_cpu, peft_threads)
    runs.spec_for = spec_for
    ns = argparse.Namespace(port=a.port, interleave_reps=a.reps, num_adapters=8, num_requests=96, seed=0, peft_threads=2)
    res = runs.run_interleaved(["hylorada-before", "hylorada", "vllm-lora"], base, ad, out, work, ns)
    t = res["tok_per_s"]
    med = lambda xs: sorted(xs)[len(xs) // 2] if len(xs) % 2 else sum(sorted(xs)[len(xs) // 2 - 1:len(xs) // 2 + 1]) / 2  # noqa: E731
    res["house_ratios"] = {f"{n} / {d}": {"median": med(t[n]) / med(t[d]), "per_rep": [x / y for x, y in zip(t[n], t[d])]}
                           for n, d in (("hylorada", "hylorada-before"), ("hylorada", "vllm-lora"),
                                        ("hylorada-before", "vllm-lora"))}
    (out / "ab.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: res[k] for k in res if k not in ("commands",)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
