"""hylorada train: loss goes down, resume continues exactly, a crash while saving keeps the last checkpoint."""
from __future__ import annotations

import json

import pytest
import torch

from hylorada.config import HyLoRADAConfig
from hylorada.train.loop import train
from hylorada.train.state import latest_checkpoint, list_checkpoints

KW = dict(seq_len=32, batch_size=2, lr=3e-3, log_every=2, progress=False, log=lambda *_: None)
CFG = dict(lora_rank=4, daa_enabled=True, landmark_enabled=True, num_landmarks=4, s2_attn_enabled=True, s2_sink_tokens=2)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    from hylorada.tiny import corpus
    lines = corpus(240, seed=3)
    p = tmp_path_factory.mktemp("data") / "train.jsonl"
    p.write_text("\n".join(json.dumps({"text": " ".join(lines[i:i + 12])}) for i in range(0, 240, 12)) + "\n")
    return p


def adapter_tensors(result):
    return {k: v.detach().clone() for k, v in result["model"].adapter_state_dict().items()}


def test_short_run_lowers_loss_and_exports(tiny_base, data_file, tmp_path):
    res = train(tiny_base, data_file, tmp_path / "run", HyLoRADAConfig(lora_rank=4), steps=16, save_every=8, **KW)
    first, last = sum(res["losses"][:3]) / 3, sum(res["losses"][-3:]) / 3
    assert last < first - 0.1, res["losses"]
    assert res["adapter"] and (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [8, 16]
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(2, 17, 2))


def test_resume_continues_at_the_right_step(tiny_base, data_file, tmp_path):
    """A 6-step run killed after its step-4 checkpoint, resumed, equals the uninterrupted 6-step run."""
    cfg = HyLoRADAConfig(**CFG)
    full = train(tiny_base, data_file, tmp_path / "full", cfg, steps=6, save_every=2, export=False, **KW)

    def killer(line):
        if line.startswith('{"step": 6'):
            raise KeyboardInterrupt("killed")
    with pytest.raises(KeyboardInterrupt):
        train(tiny_base, data_file, tmp_path / "part", cfg, steps=6, save_every=2, export=False, **(KW | {"log": killer}))
    state = json.loads((latest_checkpoint(tmp_path / "part" / "checkpoints") / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["losses"] == full["losses"][:4]
    resumed = train(tiny_base, data_file, tmp_path / "part", None, steps=6, save_every=2, resume=True, export=False, **KW)
    assert resumed["step"] == 6 and len(resumed["losses"]) == 6
    torch.testing.assert_close(torch.tensor(resumed["losses"]), torch.tensor(full["losses"]), atol=1e-5, rtol=0)
    a, b = adapter_tensors(full), adapter_tensors(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_crash_mid_save_keeps_previous_checkpoint(tiny_base, data_file, tmp_path, monkeypatch):
    import hylorada.train.state as ts
    out = tmp_path / "run"
    train(tiny_base, data_file, out, HyLoRADAConfig(lora_rank=4), steps=2, save_every=2, export=False, **KW)
    good = latest_checkpoint(out / "checkpoints")
    before = {p.name: p.read_bytes() for p in good.rglob("*") if p.is_file()}
    real = ts.save_file

    def crash(tensors, path):                      # the adapter is already written in the temp dir
        real({k: v for k, v in list(tensors.items())[:1]}, path)
        raise KeyboardInterrupt("power cut")
    monkeypatch.setattr(ts, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_base, data_file, out, None, steps=4, save_every=2, resume=True, export=False, **KW)
    monkeypatch.setattr(ts, "save_file", real)
    assert latest_checkpoint(out / "checkpoints") == good
    assert {p.name: p.read_bytes() for p in good.rglob("*") if p.is_file()} == before
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    res = train(tiny_base, data_file, out, None, steps=4, save_every=2, resume=True, export=False, **KW)
    assert res["step"] == 4 and len(res["losses"]) == 4


def test_cli_refuses_existing_checkpoints_without_resume(tiny_base, data_file, tmp_path):
    from hylorada.cli import main
    args = ["train", "--base", str(tiny_base), "--data", str(data_file), "--out", str(tmp_path / "o"),
            "--seq-len", "32", "--steps", "2", "--batch-size", "2", "--save-every", "2", "--no-export"]
    assert main(args) == 0
    assert main(args) == 1
    assert main(args + ["--resume", "--steps", "3"]) == 0
    assert latest_checkpoint(tmp_path / "o" / "checkpoints").name == "step-00000003"
