"""export of the long-context parts (landmarks, DAA, sink attention, RoPE scaling): the served-form
reference equals HyLoRADAModel (float32, 1e-5), and each part changes the output (not vacuous)."""
import pytest
import torch

from hylorada.format.meta import Attention

from hylorada import HyLoRADAConfig, HyLoRADAModel
from hylorada.commands.export import export
from hylorada.format.load import load_served
from tests.helpers import IDS, reference_for
from tests.helpers import randomize_adapter


CASES = {
    "landmarks": dict(landmark_enabled=True, num_landmarks=4),
    "daa": dict(daa_enabled=True),
    "all_dynamic": dict(daa_enabled=True, landmark_enabled=True, num_landmarks=3),
    "sink": dict(attention_mode="sink", s2_sink_tokens=2, sink_window=6),
    "s2_served": dict(attention_mode="s2", s2_group_size_ratio=0.25, s2_sink_tokens=1),
    "rope_yarn": dict(rope_scaling_type="yarn", rope_scaling_factor=4.0, rope_original_max_position=16),
    "norms": dict(train_norms=True),
    "rope_norms": dict(train_norms=True, rope_scaling_type="linear", rope_scaling_factor=2.0),
}


def _randomize_long_context(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.adapter_state_dict().items():
            if ".daa." in n or ".landmark." in n:
                p.copy_(p + torch.randn(p.shape, generator=g) * (0.5 if n.endswith("gate") or ".daa." in n else 1.0))
            elif "norm" in n:                                                 # trained RMSNorm weights
                p.mul_(1 + 0.3 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_long_context_equals_training_model(tiny_base, tmp_path, case):
    model = HyLoRADAModel.from_pretrained(tiny_base, HyLoRADAConfig(**CASES[case])).eval()
    randomize_adapter(model, seed=5)
    _randomize_long_context(model, seed=6)
    model.save(tmp_path / "ckpt")
    ad = load_served(export(tmp_path / "ckpt", tmp_path / "served", tiny_base), base_config=model.base.config)
    rope = ad.meta.rope_scaling
    ref = reference_for(tiny_base)                     # one reference: each adapter's own RoPE setting per row
    mask = torch.ones_like(IDS)
    mask[1, :3] = 0
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        want = model(input_ids=IDS, attention_mask=mask, position_ids=pos).logits
    got = ref.logits(IDS, [ad, ad], attention_mask=mask)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1, 3:], want[1, 3:], rtol=1e-5, atol=1e-5)
    # the long-context part matters: without it the reference is off by more than the tolerance
    stripped = type(ad)(path=ad.path, meta=ad.meta.replace(daa=None, landmarks=None, attention=Attention()),
                        peft_config=ad.peft_config, lora=ad.lora,
                        dynamic={k: v for k, v in ad.dynamic.items() if ".daa." not in k and ".landmark." not in k
                                 and not k.endswith("norm.weight")})
    stripped.meta = stripped.meta.replace(norms=False)
    if rope is not None:   # ... or without the RoPE scaling
        stripped.meta = stripped.meta.replace(rope_scaling=None)
    assert (ref.logits(IDS, [stripped, stripped], attention_mask=mask)[0] - want[0]).abs().max() > 1e-3
