"""shm_notify: a busy shm-ring reader's zmq notify socket no longer queues a libzmq command per wake-up.

Each case runs tests/patches/shm_notify_reader.py in a fresh process (one stock, one patched): a writer process
publishes wake-ups while the reader records reads and never polls, as under continuous traffic. The stock reader's
malloc in use grows with the wake-ups (656-byte mailbox chunks); the patched one stays flat. No engine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
N = 40_000


def growth(mode: str) -> float:
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("shm_notify_reader.py")), mode, str(N)],
                         capture_output=True, text=True, timeout=180, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["growth_mb"]


@pytest.fixture(scope="module")
def measured() -> dict[str, float]:
    return {mode: growth(mode) for mode in ("stock", "patched")}


def test_stock_reader_grows_with_wakeups(measured):
    """The bug the patch is for, reproduced: else the patched case below would prove nothing."""
    assert measured["stock"] > 0.15, measured


def test_patched_reader_stays_flat(measured):
    assert measured["patched"] < 0.05, measured
    assert measured["patched"] < measured["stock"] / 5, measured


def test_install_wraps_record_read_once():
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition

    from hylorada_patches.shm_notify import install
    install()
    wrapped = SpinCondition.record_read
    install()
    assert SpinCondition.record_read is wrapped and wrapped._hylorada
