"""shm_notify: a busy shm-ring reader's zmq notify socket no longer queues a libzmq command per wake-up.

Each case runs tests/patches/shm_notify_reader.py in a fresh process (one stock, one patched): a writer process
publishes wake-ups while the reader records reads and never polls, as under continuous traffic. The stock reader's
malloc in use grows with the wake-ups (656-byte mailbox chunks; measured here ~6 bytes per wake-up, in both halves
of the run alike); the patched one stays flat. The checks are relative — growth that keeps pace with the wake-ups,
patched against stock over the same wake-ups — so they hold on a slower or faster machine of this kind. No engine.
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


def growth(mode: str) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("shm_notify_reader.py")), mode, str(N)],
                         capture_output=True, text=True, timeout=180, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    return {mode: growth(mode) for mode in ("stock", "patched")}


def test_stock_reader_grows_with_wakeups(measured):
    """The bug the patch is for, reproduced: else the patched case below would prove nothing. A leak, not a one-off:
    the second half of the wake-ups grows malloc in use about as much as the first (at least half as much), and by
    more than 1 byte per wake-up (measured ~6)."""
    s = measured["stock"]
    assert s["first_half_mb"] > 0 and s["second_half_mb"] > 0.5 * s["first_half_mb"], measured
    assert s["growth_mb"] * 2**20 > 1.0 * N, measured


def test_patched_reader_stays_flat(measured):
    """Over the same wake-ups the patched reader grows by under a tenth of the stock one, overall and in the
    second half (where a slow leak would show after any warm-up allocation)."""
    s, p = measured["stock"], measured["patched"]
    assert p["growth_mb"] < s["growth_mb"] / 10, measured
    assert p["second_half_mb"] < s["second_half_mb"] / 10, measured


def test_install_wraps_record_read_once():
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition

    from hylorada_patches.shm_notify import install
    install()
    wrapped = SpinCondition.record_read
    install()
    assert SpinCondition.record_read is wrapped and wrapped._hylorada
