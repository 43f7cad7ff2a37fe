"""Train the three demo adapters of `hylorada-serve --demo` on the real base, by self-distillation (no dataset hub).

    python -m hylorada_serve.demo_build [--base DIR] [--out hylorada_serve/demo_adapters] [--steps 60]

1. Prompts are made locally from templates (seeded); the base answers each (greedy, chat template).
2. Each answer is rewritten in one style, checkable by a program:
       demo-caps     (PEFT LoRA, r 8)                    the answer in CAPITALS
       demo-signoff  (PEFT DoRA, r 8, then convert-peft)  the answer, then the line SIGNOFF
       demo-list     (HyLoRADA, position bias on, trained with hylorada.train)   the answer as a numbered list
3. Each adapter is trained on (prompt, rewritten answer) — the PEFT ones with the loss on the answer tokens, the
   HyLoRADA one through `hylorada train` on the chat-formatted text — and written in the served form.
4. Held-out prompts measure how often each adapter's greedy answer has its style (and the base's, as the control);
   the rates go into OUT/manifest.json beside the adapters.

The result is committed (hylorada_serve/demo_adapters/, a few MB), so `make demo` only fetches the base; rerun this
to rebuild them (tens of minutes on 2 CPU cores). Progress is printed per stage and per training step.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
DEFAULT_OUT = HERE / "demo_adapters"
BASE_NAME = "smollm2-135m-instruct"
SIGNOFF = "-- answered by demo-signoff"
TARGETS = ["q_proj", "v_proj", "o_proj"]
STYLES = ("demo-caps", "demo-signoff", "demo-list")

SUBJECTS = ["France", "Japan", "Brazil", "Canada", "Egypt", "Italy", "Kenya", "Norway", "Peru", "India", "Spain",
            "Mexico", "Germany", "Chile", "Greece", "Vietnam"]
THINGS = ["the sun", "the moon", "rain", "a volcano", "a rainbow", "the ocean", "a desert", "a forest", "snow",
          "lightning", "a river", "the wind"]
ACTIVITIES = ["sleeping well", "learning to cook", "running", "saving money", "reading more", "studying",
              "gardening", "staying focused", "drinking enough water", "writing clearly"]
TEMPLATES = ["What is the capital of {s}?", "Tell me one fact about {s}.", "What language is spoken in {s}?",
             "Describe {t} in one sentence.", "Why is {t} important?", "What causes {t}?",
             "Give me a tip for {a}.", "How do I get better at {a}?", "What is a common mistake when {a}?"]


def prompts(n: int, seed: int) -> list[str]:
    """n distinct questions from the templates, in a seeded order."""
    rng = random.Random(seed)
    pool = sorted({t.format(s=s, t=th, a=a) for t in TEMPLATES for s in SUBJECTS for th in THINGS for a in ACTIVITIES})
    rng.shuffle(pool)
    return pool[:n]


# --- the styles: rewrite (for training) and check (for evaluation) --------------------------------------------

def rewrite(style: str, answer: str) -> str:
    answer = answer.strip()
    if style == "demo-caps":
        return answer.upper()
    if style == "demo-signoff":
        return f"{answer}\n\n{SIGNOFF}"
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+", answer) if p.strip()] or [answer]
    return "\n".join(f"{i}. {p}" for i, p in enumerate(parts[:5], 1))


def has_style(style: str, text: str) -> bool:
    text = text.strip()
    if style == "demo-caps":
        letters = [c for c in text if c.isalpha()]
        return len(letters) >= 5 and sum(c.isupper() for c in letters) >= 0.9 * len(letters)
    if style == "demo-signoff":
        return SIGNOFF in text
    return text.startswith("1. ")


# --- the base's answers --------------------------------------------------------------------------------------

def chat(tok, question: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)


def generate(model, tok, questions: list[str], max_new: int, batch: int = 8) -> list[str]:
    """Greedy answers (left-padded batches); the chat template's end token stops each."""
    import torch
    tok.padding_side = "left"
    out = []
    for i in range(0, len(questions), batch):
        enc = tok([chat(tok, q) for q in questions[i:i + batch]], return_tensors="pt", padding=True,
                  add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
        out += [tok.decode(r[enc.input_ids.shape[1]:], skip_special_tokens=True).strip() for r in ids]
        print(f"  answered {min(i + batch, len(questions))}/{len(questions)}", flush=True)
    return out


# --- training ------------------------------------------------------------------------------------------------

def examples(tok, pairs: list[tuple[str, str]], max_len: int):
    """(input_ids, labels) per pair; labels -100 on the prompt, so the loss is on the answer (+ end token)."""
    import torch
    rows = []
    for q, a in pairs:
        p = tok(chat(tok, q), add_special_tokens=False).input_ids
        full = tok(chat(tok, q) + a + "<|im_end|>", add_special_tokens=False).input_ids[:max_len]
        lab = [-100] * min(len(p), len(full)) + full[len(p):]
        rows.append((torch.tensor(full), torch.tensor(lab)))
    return rows


def train_peft(base: Path, tok, pairs, out: Path, dora: bool, steps: int, lr: float, seed: int, batch: int = 4) -> Path:
    """PEFT LoRA / DoRA r 8 on TARGETS, AdamW, float32, right-padded batches. (CPU bf16 autocast was measured
    far slower than float32 here: over 4 min for a step that takes seconds in float32.)"""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from hylorada.commands.convert_peft import convert_peft
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0, use_dora=dora))
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rows = examples(tok, pairs, 128)
    rng = random.Random(seed)
    peft.train()
    t0 = time.time()
    for step in range(steps):
        rows_b = rng.sample(rows, min(batch, len(rows)))
        n = max(len(r[0]) for r in rows_b)
        ids = torch.stack([torch.cat([r[0], r[0].new_full((n - len(r[0]),), tok.pad_token_id)]) for r in rows_b])
        mask = torch.stack([torch.arange(n) < len(r[0]) for r in rows_b]).long()
        lab = torch.stack([torch.cat([r[1], r[1].new_full((n - len(r[1]),), -100)]) for r in rows_b])
        loss = peft(input_ids=ids, attention_mask=mask, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in peft.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 5 == 0 or step == steps - 1:
            print(f"  {out.name} step {step + 1}/{steps} loss {float(loss):.3f} ({time.time() - t0:.0f} s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        peft.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        return convert_peft(tmp, out, base)


def train_hylorada(base: Path, tok, pairs, out: Path, steps: int, lr: float, seed: int) -> Path:
    """HyLoRADA (position bias on, r 8 on TARGETS) through `hylorada.train.loop.train`, then its served export."""
    from hylorada import HyLoRADAConfig
    from hylorada.train.loop import train
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.jsonl"
        data.write_text("".join(json.dumps({"text": chat(tok, q) + a + "<|im_end|>\n"}) + "\n" for q, a in pairs))
        cfg = HyLoRADAConfig(lora_rank=8, lora_alpha=16.0, target_modules=tuple(TARGETS), position_bias_enabled=True)
        res = train(base, data, Path(tmp) / "run", cfg, seq_len=128, steps=steps, lr=lr, batch_size=4,
                    save_every=steps, log_every=10, seed=seed, progress=False)
        if not res["adapter"]:
            raise SystemExit(f"demo-list: export failed: {res['export_note']}")
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(res["adapter"], out)
    return out


# --- evaluation ------------------------------------------------------------------------------------------------

def style_rates(base: Path, tok, out: Path, questions: list[str], max_new: int) -> dict:
    """Fraction of held-out answers with each style, for the base and for each adapter (ServedReference, float32)."""
    import torch

    from hylorada.format.load import load_served
    from hylorada.reference.served import ServedReference
    ref = ServedReference(base, dtype=torch.float32)
    prompts_ids = [tok(chat(tok, q), add_special_tokens=False).input_ids for q in questions]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    answers = {}
    for name in (None, *STYLES):
        ad = None if name is None else load_served(out / name)
        outs = ref.greedy(prompts_ids, [ad] * len(questions), max_new)
        texts = []
        for ids, _ in outs:
            ids = ids[:ids.index(eos)] if eos in ids else ids
            texts.append(tok.decode(ids, skip_special_tokens=True))
        answers[name or "base"] = texts
    rates = {who: {s: sum(has_style(s, t) for t in texts) / len(texts) for s in STYLES} for who, texts in answers.items()}
    return {"rates": rates, "examples": {who: texts[:2] for who, texts in answers.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hylorada_serve.demo_build", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=None, help=f"base model folder (default: `hylorada base {BASE_NAME}`'s cache)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="where the three served adapters and manifest.json go")
    ap.add_argument("--train-prompts", type=int, default=64)
    ap.add_argument("--eval-prompts", type=int, default=12)
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per adapter")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-new", type=int, default=48, help="answer length (tokens) for distillation and evaluation")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if a.base is None:
        from hylorada.bases import ensure_base
        base = Path(ensure_base(BASE_NAME))
    else:
        base = Path(a.base)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(base)
    t0 = time.time()
    qs = prompts(a.train_prompts + a.eval_prompts, a.seed)
    train_qs, eval_qs = qs[:a.train_prompts], qs[a.train_prompts:]
    print(f"[1/4] the base answers {len(train_qs)} training questions", flush=True)
    cached = out / "distill.json"                   # the base's answers, kept so a rerun skips this stage
    if cached.is_file() and json.loads(cached.read_text()).get("questions") == train_qs:
        answers = json.loads(cached.read_text())["answers"]
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        answers = generate(model, tok, train_qs, a.max_new)
        del model
        cached.write_text(json.dumps({"questions": train_qs, "answers": answers}, indent=1) + "\n")
    for i, style in enumerate(STYLES):
        pairs = [(q, rewrite(style, ans)) for q, ans in zip(train_qs, answers)]
        print(f"[{2 + (i > 0)}/4] training {style}", flush=True)
        if style == "demo-list":
            train_hylorada(base, tok, pairs, out / style, a.steps, a.lr, a.seed)
        else:
            train_peft(base, tok, pairs, out / style, dora=style == "demo-signoff", steps=a.steps, lr=a.lr, seed=a.seed)
    print(f"[4/4] style rates on {len(eval_qs)} held-out questions", flush=True)
    ev = style_rates(base, tok, out, eval_qs, a.max_new)
    manifest = {"base": BASE_NAME, "styles": {"demo-caps": "capitals (PEFT LoRA)", "demo-signoff": f"ends with {SIGNOFF!r} "
                "(PEFT DoRA, converted)", "demo-list": "numbered list (HyLoRADA, position bias)"},
                "command": "python -m hylorada_serve.demo_build " + " ".join(argv if argv is not None else sys.argv[1:]),
                "steps": a.steps, "lr": a.lr, "train_prompts": a.train_prompts, "eval_questions": eval_qs,
                "build_seconds": round(time.time() - t0), **ev}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps({"rates": ev["rates"], "seconds": manifest["build_seconds"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
