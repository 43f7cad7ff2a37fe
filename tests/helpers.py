"""Helpers shared by tests (import as `from tests.helpers import ...`)."""
import torch


def randomize_adapter(model, seed: int = 0, scale: float = 0.05) -> None:
    """Give every adapter tensor a non-trivial value (fresh adapters are the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.adapter_state_dict().items():
            if name.endswith("lora_B") or name == "position_bias.bias":
                p.copy_(torch.randn(p.shape, generator=g) * (scale if name.endswith("lora_B") else 1.0))
            elif name.endswith(".magnitude"):
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(("magnitude_gate", "residual_weight", "position_scale")):
                p.copy_(torch.randn((), generator=g))


def engine_outputs(outs) -> list[tuple[list[int], list[dict[int, float]]]]:
    """vLLM RequestOutputs -> (greedy token ids, per-step {token: logprob}) — the ServedReference.greedy shape."""
    return [(list(o.outputs[0].token_ids), [{t: lp.logprob for t, lp in s.items()} for s in o.outputs[0].logprobs])
            for o in outs]


def assert_same_generation(got, want, label: str, tol: float = 1e-3) -> None:
    """Identical greedy tokens; every reference top-5 logprob within `tol` of the engine's (float32)."""
    (gids, gsteps), (wids, wsteps) = got, want
    assert gids == wids, f"{label}: tokens {gids} != reference {wids}"
    for k, (gs, ws) in enumerate(zip(gsteps, wsteps)):
        common = [t for t in ws if t in gs]
        assert len(common) >= 4, f"{label}: step {k}: top-5 sets differ {sorted(gs)} vs {sorted(ws)}"
        err = max(abs(gs[t] - ws[t]) for t in common)
        assert err < tol, f"{label}: step {k}: logprob error {err:.2e}"


IDS = torch.randint(3, 500, (2, 20), generator=torch.Generator().manual_seed(0))


def make_peft(base_dir, out_dir, seed: int = 0, **lora_kwargs):
    """Save a PEFT adapter whose lora_B (and DoRA magnitude) are random, so its delta is non-zero."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    kw = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0) | lora_kwargs
    model = get_peft_model(base, LoraConfig(**kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif "lora_magnitude_vector" in n:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))
    model.save_pretrained(out_dir)
    return model.eval()


def base_logits(tiny_base, ids=IDS):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)(ids).logits


_REFS = {}


def reference_for(base_dir):
    """A ServedReference per base folder, cached for the session."""
    from hylorada.reference.served import ServedReference
    if str(base_dir) not in _REFS:
        _REFS[str(base_dir)] = ServedReference(base_dir)
    return _REFS[str(base_dir)]
