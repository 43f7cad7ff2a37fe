"""`python -m bench.method.demo_check`: start `hylorada-serve --demo` as a user would, ask the held-out questions
(demo_build's eval split) to the base and to each demo adapter over the OpenAI chat API, and report how often each
answer has each style — the demo adapters' manifest (hylorada_serve/demo_adapters/manifest.json) — plus the
server's start-up time. The server listens on 127.0.0.1 only and is stopped (process group) at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from hylorada_serve.demo_build import DEFAULT_OUT, SIGNOFF, STYLES, has_style, prompts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.method.demo_check", description=__doc__)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--train-prompts", type=int, default=48, help="the build's training split (skipped)")
    ap.add_argument("--eval-prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--out", default=str(DEFAULT_OUT / "manifest.json"))
    ap.add_argument("--log", default="/tmp/hylorada-demo-check.log")
    a = ap.parse_args(argv)
    import httpx

    from bench.proc import launch, stop, wait_ready
    qs = prompts(a.train_prompts + a.eval_prompts, 0)[a.train_prompts:]
    cmd = [str(Path(sys.executable).with_name("hylorada-serve")), "--demo", "--port", str(a.port)]
    url = f"http://127.0.0.1:{a.port}"
    t0 = time.time()
    proc = launch(cmd, Path(a.log), env=os.environ | {"VLLM_HOST_IP": "127.0.0.1"})
    try:
        def ready():
            try:
                names = {m["id"] for m in httpx.get(url + "/v1/models", timeout=5).json()["data"]}
                return set(STYLES) <= names
            except (httpx.HTTPError, ValueError, KeyError):
                return False
        why = wait_ready(proc, ready, 900)
        if why is not None:
            raise SystemExit(f"demo server {why}; see {a.log}")
        startup = time.time() - t0
        base = next(m["id"] for m in httpx.get(url + "/v1/models").json()["data"] if m["id"] not in STYLES)
        answers = {}
        for model in (base, *STYLES):
            answers[model] = []
            for q in qs:
                r = httpx.post(url + "/v1/chat/completions", timeout=120, json={
                    "model": model, "messages": [{"role": "user", "content": q}], "max_tokens": a.max_tokens,
                    "temperature": 0})
                r.raise_for_status()
                answers[model].append(r.json()["choices"][0]["message"]["content"])
            print(f"{model}: {answers[model][0]!r}", flush=True)
    finally:
        stop(proc, timeout_s=30.0, group=True)
    rates = {m: {s: sum(has_style(s, t) for t in ts) / len(ts) for s in STYLES} for m, ts in answers.items()}
    manifest = {"base": "smollm2-135m-instruct (float32)",
                "styles": {"demo-caps": "capitals (PEFT LoRA r8 on q/v/o)",
                           "demo-signoff": f"ends with {SIGNOFF!r} (PEFT DoRA r8, converted with convert-peft)",
                           "demo-list": "numbered list (HyLoRADA r8, position bias, trained with hylorada train)"},
                "measured_with": "python -m bench.method.demo_check (greedy, over hylorada-serve --demo)",
                "startup_s": round(startup, 1), "eval_questions": qs, "rates": rates,
                "answers": {m: ts for m, ts in answers.items()}}
    Path(a.out).write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps({"startup_s": manifest["startup_s"], "rates": rates}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
