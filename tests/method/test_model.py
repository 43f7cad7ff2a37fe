"""HyLoRADAModel: identity at init, the position bias, positions under padding and KV cache, checkpoint, learning."""
import pytest
import torch

from hylorada import HyLoRADAConfig, HyLoRADAModel, functional as F
from hylorada.format.checkpoint import CONFIG_FILE, STATE_FILE
from tests.helpers import randomize_adapter

CONFIGS = [  # a table of configurations, as PEFT drives its method tests
    dict(),
    dict(lora_rank=16, lora_alpha=8.0, use_rslora=False),
    dict(target_modules=("q_proj", "v_proj"), position_bias_enabled=False),
    dict(use_dora_magnitude=False, residual_weight_init=2.0, magnitude_gate_init=-1.0, lora_dropout=0.1),
]


@pytest.mark.parametrize("kw", CONFIGS)
def test_fresh_model_reproduces_base_exactly(tiny_base, base_model, kw):
    ids = torch.randint(0, 500, (2, 40), generator=torch.Generator().manual_seed(0))
    model = HyLoRADAModel.from_pretrained(tiny_base, HyLoRADAConfig(**kw)).eval()
    assert torch.equal(model(input_ids=ids).logits, base_model(ids).logits)
    assert all(not p.requires_grad for n, p in model.base.named_parameters() if ".hylorada." not in n)
    counts = model.trainable_parameters()
    assert counts["lora"] > 0 and counts["total_trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_position_bias_acts_only_through_the_lora_delta(tiny_base, base_model):
    model = HyLoRADAModel.from_pretrained(tiny_base, HyLoRADAConfig(residual_weight_init=1e4)).eval()
    randomize_adapter(model, seed=1)
    with torch.no_grad():
        for name, p in model.adapter_state_dict().items():
            if name.endswith("lora_B"):
                p.zero_()                        # no delta anywhere ...
            if name.endswith(("residual_weight", "magnitude_gate")):
                p.fill_(1e4)                     # ... and c == 1 (beta = 1)
    ids = torch.randint(0, 500, (1, 80), generator=torch.Generator().manual_seed(2))
    assert torch.equal(model(input_ids=ids).logits, base_model(ids).logits)


def test_position_scale_follows_absolute_position(tiny_base):
    model = HyLoRADAModel.from_pretrained(tiny_base, HyLoRADAConfig()).eval()
    randomize_adapter(model, seed=4)
    layer = model.base.model.layers[1].self_attn.v_proj
    seen = {}
    layer.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    T = 100
    model(input_ids=torch.randint(0, 500, (1, T)), position_ids=torch.arange(T)[None] + 7)
    x, y = seen["x"][0], seen["y"][0]
    a = layer.hylorada
    c = F.blend_scale(F.effective_magnitude(a.magnitude, a.magnitude_init, a.magnitude_gate),
                      torch.linalg.norm(layer.base_layer.weight + a.scaling * a.lora_B @ a.lora_A, dim=1), a.residual_weight)
    bias, w = model.position_bias.bias, a.position_scale
    from tests.test_functional import bucket_reference
    for t in (0, 24, 25, 31, 60, 99):            # positions 7..106 cross the exact and the log range
        p = 1 + torch.sigmoid(w) * torch.tanh(bias[bucket_reference(t + 7)])
        want = c * (layer.base_layer.weight @ x[t] + a.scaling * p * (a.lora_B @ (a.lora_A @ x[t])))
        torch.testing.assert_close(y[t], want, rtol=1e-5, atol=1e-5)

    # a different position gives a different output for the same token: layer 0's input is the embedding (no
    # attention before it), so the same ids at positions 500.. reach it unchanged and only p(pos) differs
    ids, first = torch.randint(0, 500, (1, T), generator=torch.Generator().manual_seed(8)), model.base.model.layers[0]
    got = []
    first.self_attn.v_proj.register_forward_hook(lambda m, i, o: got.append((i[0][0], o[0])))
    for shift in (7, 500):
        model(input_ids=ids, position_ids=torch.arange(T)[None] + shift)
    (x7, y7), (x500, y500) = got
    assert torch.equal(x7, x500)
    assert (y7 - y500).abs().amax(dim=-1).min() > 1e-4          # every token's output moved


def test_positions_under_left_padding_and_kv_cache(tiny_base):
    model = HyLoRADAModel.from_pretrained(tiny_base, HyLoRADAConfig()).eval()
    randomize_adapter(model, seed=5, scale=0.2)
    g = torch.Generator().manual_seed(6)
    prompts = [torch.randint(3, 500, (n,), generator=g) for n in (45, 30)]
    singles = [model.generate(p[None], max_new_tokens=10, do_sample=False, pad_token_id=2)[0, len(p):] for p in prompts]
    # greedy with a KV cache == greedy by full recompute (positions continue from the cache)
    seq = prompts[0][None]
    for _ in range(10):
        seq = torch.cat([seq, model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(seq[0, 45:], singles[0])
    # a left-padded batch gives each sequence the same tokens as alone
    T = max(len(p) for p in prompts)
    ids = torch.full((2, T), 2)
    mask = torch.zeros(2, T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):], mask[i, T - len(p):] = p, 1
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=2)
    for i in range(2):
        assert torch.equal(out[i, T:], singles[i])


def test_save_load_round_trips_bit_exactly(tiny_base, tmp_path):
    model = HyLoRADAModel.from_pretrained(tiny_base, HyLoRADAConfig(lora_rank=4))
    randomize_adapter(model, seed=7)
    model.save(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} >= {CONFIG_FILE, STATE_FILE}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]        # no temp folders left
    loaded = HyLoRADAModel.load(tmp_path / "ckpt")
    a, b = model.adapter_state_dict(), loaded.adapter_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.randint(0, 500, (1, 50))
    assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_load_refuses_a_checkpoint_for_another_shape(tiny_base, tmp_path):
    model = HyLoRADAModel.from_pretrained(tiny_base, HyLoRADAConfig(lora_rank=4))
    model.save(tmp_path / "ckpt")
    cfg = HyLoRADAConfig.from_json(tmp_path / "ckpt" / CONFIG_FILE)
    cfg.lora_rank = 8
    cfg.to_json(tmp_path / "ckpt" / CONFIG_FILE)
    with pytest.raises(ValueError, match="wrong shapes"):
        HyLoRADAModel.load(tmp_path / "ckpt")


def test_a_few_steps_lower_the_loss(tiny_base):
    torch.manual_seed(0)
    model = HyLoRADAModel.from_pretrained(tiny_base, HyLoRADAConfig(lora_rank=8, lora_alpha=8.0))
    ids = torch.randint(3, 60, (4, 32), generator=torch.Generator().manual_seed(8))   # a toy "language": small vocab
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for _ in range(12):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_refuses_unknown_target_modules(tiny_base):
    with pytest.raises(ValueError, match="not found"):
        HyLoRADAModel.from_pretrained(tiny_base, HyLoRADAConfig(target_modules=("q_proj", "c_attn")))
