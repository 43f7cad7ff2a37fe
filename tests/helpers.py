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
