"""Faults. Engine death has its own server in test_engine_death.py. Here:

  * the adapters folder disappears and comes back (shared session server): adapters keep serving from their
    published copies while DIR/ is gone (a missing DIR/ is a transient, e.g. an unmounted share), nothing is
    removed, and a folder added after it returns is loaded;
  * disk full while a converter writes (in-process, no engine): ENOSPC raised from inside the safetensors write of
    `hylorada convert-peft` / `hylorada export` leaves no OUT_DIR and no temporary folder behind, and a watcher
    scanning the parent folder all along never sees anything to load.
"""
from __future__ import annotations

import errno
import shutil
import threading
import time

import httpx
import pytest

from hylorada.commands.convert_peft import convert_peft

from .conftest import ADMIN_KEY, API_KEY


def greedy(server, model: str):
    r = httpx.post(server.url + "/v1/completions", timeout=60, headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"model": model, "prompt": [5, 77, 140], "max_tokens": 4, "temperature": 0,
                         "ignore_eos": True, "return_token_ids": True})
    return r.status_code, (r.json()["choices"][0]["token_ids"] if r.status_code == 200 else None)


def statuses(server) -> dict:
    r = httpx.get(server.url + "/v1/adapters", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    return {a["name"]: (a["status"], a["version"]) for a in r.json()["data"]}


@pytest.mark.vllm
def test_adapters_folder_disappears_and_comes_back(server):
    before = {m: greedy(server, m) for m in ("demo-lora", "demo-hylorada")}
    st0 = statuses(server)
    away = server.adapters.with_name(server.adapters.name + "-away")
    server.adapters.rename(away)
    try:
        time.sleep(2.0)                                          # > stable-seconds + several polls
        assert {m: greedy(server, m) for m in before} == before   # still served, same tokens
        assert statuses(server) == st0                           # nothing removed, nothing reloaded
    finally:
        away.rename(server.adapters)
    time.sleep(1.0)
    assert statuses(server) == st0                               # same content: same versions, no reload
    shutil.copytree(server.spare / "demo-lora", server.adapters / "after-return")
    try:
        deadline = time.time() + 60
        while greedy(server, "after-return")[0] != 200 and time.time() < deadline:
            time.sleep(0.2)
        assert greedy(server, "after-return") == before["demo-lora"]
    finally:
        shutil.rmtree(server.adapters / "after-return")
        deadline = time.time() + 30                              # unlisted before later modules run
        while greedy(server, "after-return")[0] != 404 and time.time() < deadline:
            time.sleep(0.2)
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


# ---- disk full while a converter writes (no engine) ------------------------------------------------------------

@pytest.fixture(scope="module")
def peft_and_base(tmp_path_factory):
    from hylorada.tiny import build_tiny_llama
    from hylorada_serve.demo import TARGETS

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("enospc")
    base = build_tiny_llama(root / "tiny", "tiny")
    torch.manual_seed(0)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                          LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False,
                                     use_dora=True))          # DoRA: two safetensors files (weights + c)
    peft.save_pretrained(root / "peft")
    return root, base, root / "peft"


def enospc_after(monkeypatch, module, n_ok: int, fraction: float = 0.5):
    """Make module.save_file write `fraction` of its bytes and raise ENOSPC from the (n_ok+1)-th call on."""
    from safetensors.torch import save

    calls = []

    def save_file(tensors, path, metadata=None):
        calls.append(path)
        data = save(tensors, metadata=metadata)
        if len(calls) <= n_ok:
            with open(path, "wb") as f:
                f.write(data)
            return
        with open(path, "wb") as f:
            f.write(data[: int(len(data) * fraction)])
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(module, "save_file", save_file)
    return calls


class Watch:
    """An AdapterStore scanning OUT's parent every 10 ms in a thread while the converter runs."""

    def __init__(self, root):
        from hylorada_serve.store import AdapterStore

        self.store, self.seen, self.stop = AdapterStore(root, stable_seconds=0.0), [], threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            to_load, _ = self.store.scan()
            self.seen += to_load
            time.sleep(0.01)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join(timeout=10)


@pytest.mark.parametrize("n_ok", [0, 1], ids=["first-file", "second-file"])
def test_disk_full_during_convert_publishes_nothing(monkeypatch, peft_and_base, n_ok):
    import hylorada.format.write as convert

    root, base, peft = peft_and_base
    out_root = root / f"DIR-{n_ok}"
    out_root.mkdir()
    calls = enospc_after(monkeypatch, convert, n_ok)
    with Watch(out_root) as w, pytest.raises(OSError) as e:
        convert_peft(peft, out_root / "my-adapter", base)
    assert e.value.errno == errno.ENOSPC and len(calls) == n_ok + 1
    assert list(out_root.iterdir()) == [] and w.seen == [] and w.store.entries == {}
    monkeypatch.undo()                                           # space again: the same command succeeds
    convert_peft(peft, out_root / "my-adapter", base)
    assert [p.name for p in out_root.iterdir()] == ["my-adapter"]


def test_disk_full_during_cli_convert_exits_nonzero(monkeypatch, peft_and_base, capsys):
    import hylorada.format.write as convert
    from hylorada.cli import main

    root, base, peft = peft_and_base
    out_root = root / "DIR-cli"
    out_root.mkdir()
    enospc_after(monkeypatch, convert, 0, fraction=0.9)
    code = main(["convert-peft", str(peft), str(out_root / "x"), "--base", str(base)])   # no traceback: a code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and list(out_root.iterdir()) == []
    assert len(err) == 1 and err[0].startswith("hylorada convert-peft: error: No space left on device"), err


def test_disk_full_during_export_publishes_nothing(monkeypatch, tmp_path):
    """`hylorada export` goes through the same write_served (hylorada.format.write.save_file)."""
    from hylorada_serve.demo import hylorada_adapter
    import hylorada.format.write as convert
    from hylorada.tiny import build_tiny_llama

    base = build_tiny_llama(tmp_path / "tiny", "tiny")
    out_root = tmp_path / "DIR"
    out_root.mkdir()
    enospc_after(monkeypatch, convert, 1)                         # the side file (hylorada_dynamic) fails
    with Watch(out_root) as w, pytest.raises(OSError):
        hylorada_adapter(base, out_root / "hyl", seed=1, rank=4)
    assert list(out_root.iterdir()) == [] and w.seen == []
