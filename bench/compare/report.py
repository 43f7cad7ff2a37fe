"""`python -m bench.compare.report DIR [DIR ...]`: markdown tables from bench.compare's comparison.json (for
bench/README.md).

`python -m bench.compare.report --across DIR DIR ...`: one column per run (output tok/s per system and every ratio).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _ms(v) -> str:
    return f"{1000 * v:.0f}"


def systems_table(cmp: dict) -> str:
    rows = ["| system | output tok/s | req/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | e2e p50 / p99 ms | errors |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in cmp["systems"].items():
        o = s["overall"]
        rows.append(f"| {name} | {o['output_tok_per_s']:.1f} | {o['req_per_s']:.2f} | "
                    f"{_ms(o['ttft_s']['p50'])} / {_ms(o['ttft_s']['p99'])} | "
                    f"{_ms(o['tpot_s']['p50'])} / {_ms(o['tpot_s']['p99'])} | "
                    f"{_ms(o['e2e_s']['p50'])} / {_ms(o['e2e_s']['p99'])} | {o['errors']} |")
    return "\n".join(rows)


def ratios_table(cmp: dict) -> str:
    rows = ["| ratio | output tok/s | p50 TTFT | target | |", "|---|---:|---:|---:|---|"]
    for r in cmp["ratios"]:
        verdict = "" if r["target"] is None else ("met" if r["met"] else "missed")
        target = "" if r["target"] is None else f">= {r['target']}x"
        rows.append(f"| {r['ratio']} | {r['output_tok_per_s']:.2f}x | {r['ttft_p50']:.2f}x | {target} | {verdict} |")
    p = cmp.get("paired")
    if p:
        rows.append(f"| hylorada / plain LoRA, paired in one server ({p['reps']} A/B reps) | "
                    f"{p['ratio_of_medians']:.3f}x | | >= 0.95x | {'met' if p['ratio_of_medians'] >= 0.95 else 'missed'} |")
    return "\n".join(rows)


def interleaved_table(cmp: dict) -> str:
    """bench.compare --interleave: each system's tok/s per round and median, then the ratios of medians with
    every round's own ratio (the rounds share the machine's minutes, so their spread is the noise)."""
    it = cmp.get("interleaved")
    if not it:
        return ""
    reps = it["reps"]
    rows = ["| system | " + " | ".join(f"round {i}" for i in range(reps)) + " | median tok/s | median p50 TTFT ms |",
            "|---|" + "---:|" * (reps + 2)]
    for name, toks in it["tok_per_s"].items():
        rows.append(f"| {name} | " + " | ".join(f"{t:.1f}" for t in toks) +
                    f" | {it['median_tok_per_s'][name]:.1f} | {_ms(it['median_ttft_p50_s'][name])} |")
    rows += ["", "| ratio (medians) | output tok/s | per round | p50 TTFT | target | |", "|---|---:|---|---:|---:|---|"]
    for r in it["ratios"]:
        verdict = "" if r["target"] is None else ("met" if r["met"] else "missed")
        target = "" if r["target"] is None else f">= {r['target']}x"
        rows.append(f"| {r['ratio']} | {r['output_tok_per_s']:.2f}x | " + ", ".join(f"{x:.2f}" for x in r["per_rep"])
                    + f" | {r['ttft_p50']:.2f}x | {target} | {verdict} |")
    return "\n".join(rows)


def scaling_table(cmp: dict, knob: str) -> str:
    sweeps = cmp.get("scaling") or {}
    if not sweeps:
        return ""
    names = [n for n in sweeps if sweeps[n].get(knob)]
    if not names:
        return ""
    cold = knob.startswith("num_adapters")
    rss = all("rss_mb" in pt for n in names for pt in sweeps[n][knob])     # runs before 2026-12-06 have none
    label = {"num_adapters": "distinct adapters (uniform)", "num_adapters_zipf": "distinct adapters (Zipf 1)"}
    head = "| " + label.get(knob, "rate req/s") + " | " + " | ".join(
        f"{n} tok/s | {n} p99 e2e ms" + (f" | {n} cold / hot TTFT p99 ms" if cold else "")
        + (f" | {n} RSS MiB" if rss else "") for n in names) + " |"
    rows = [head, "|---|" + "---:|" * ((2 + cold + rss) * len(names))]
    for i, pt in enumerate(sweeps[names[0]][knob]):
        cells = []
        for n in names:
            p = sweeps[n][knob][i]
            o = p["overall"]
            cells += [f"{o['output_tok_per_s']:.1f}", _ms(o["e2e_s"]["p99"])]
            if cold:
                cells.append(f"{_ms(o['ttft_cold_s']['p99'])} / {_ms(o['ttft_hot_s']['p99'])}" if "ttft_cold_s" in o
                             else "")
            if rss:
                cells.append(f"{p['rss_mb']:.0f}")
        rows.append(f"| {pt['x']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def across_runs(dirs: list[str]) -> str:
    """Output tok/s per system and the ratios, one column per run (how much the shared machine moved them)."""
    cmps = [json.loads((Path(d) / "comparison.json").read_text()) for d in dirs]
    cols = " | ".join(Path(d).name for d in dirs)
    rows = [f"| output tok/s | {cols} |", "|---|" + "---:|" * len(dirs)]
    names = list(dict.fromkeys(n for c in cmps for n in c["systems"]))
    for n in names:
        rows.append(f"| {n} | " + " | ".join(f"{c['systems'][n]['overall']['output_tok_per_s']:.1f}"
                                            if n in c["systems"] else "" for c in cmps) + " |")
    ratios = list(dict.fromkeys(r["ratio"] for c in cmps for r in c["ratios"]))
    for r in ratios:
        vals = [next((x for x in c["ratios"] if x["ratio"] == r), None) for c in cmps]
        rows.append(f"| **{r}** | " + " | ".join(f"{v['output_tok_per_s']:.2f}x" if v else "" for v in vals) + " |")
    rows.append("| **hylorada / plain LoRA, paired** | " + " | ".join(
        f"{c['paired']['ratio_of_medians']:.3f}x" if c.get("paired") else "" for c in cmps) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = argv if argv is not None else sys.argv[1:]
    if argv and argv[0] == "--across":
        print(across_runs(argv[1:]))
        return 0
    for d in argv:
        cmp = json.loads((Path(d) / "comparison.json").read_text())
        print(f"### {d}\n")
        if cmp["systems"]:
            print(systems_table(cmp) + "\n\n" + ratios_table(cmp) + "\n")
        elif cmp.get("paired"):
            print(ratios_table(cmp) + "\n")
        t = interleaved_table(cmp)
        if t:
            print(t + "\n")
        for knob in ("num_adapters", "num_adapters_zipf", "rate"):
            t = scaling_table(cmp, knob)
            if t:
                print(t + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
