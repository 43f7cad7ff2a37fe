"""orphans: a vLLM model worker is ended by the kernel when its engine core exits; nothing else is touched.

A stand-in engine core (orphans_child.py, its own session) forks a worker of vLLM's name that installs the patch;
the stand-in is SIGKILLed as a killed engine core is, and the worker must be gone within seconds. The stock
worker (no install) outlives it: what the patch changes, and the proof this test can fail. A process of another
name (the engine core, the API server) is left as it was."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.proc import session_pids
from hylorada_patches import orphans

CHILD = Path(__file__).with_name("orphans_child.py")
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
ROOT = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def run_child(mode: str, name: str):
    """(the stand-in's Popen, its worker's report) — the stand-in leads its own session."""
    proc = subprocess.Popen([sys.executable, str(CHILD), mode, name], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    line = proc.stdout.readline()
    assert line, f"the stand-in engine core printed nothing (exit {proc.poll()})"
    return proc, json.loads(line)


def kill_all(proc, worker_pid: int) -> None:
    for pid in [proc.pid, worker_pid, *session_pids(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    proc.wait(timeout=10)


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    return not alive(pid)


@linux
def test_a_worker_dies_with_its_engine_core():
    proc, report = run_child("patched", "VllmWorker-0")
    try:
        assert report["installed"] is True and report["death_signal"] == signal.SIGKILL, report
        os.kill(proc.pid, signal.SIGKILL)                    # the engine core killed, as in test_engine_death
        proc.wait(timeout=10)
        assert gone_within(report["pid"], 5), "the worker outlived its engine core by 5 s"
    finally:
        kill_all(proc, report["pid"])


@linux
def test_a_stock_worker_outlives_its_engine_core():
    proc, report = run_child("stock", "VllmWorker-0")
    try:
        assert report["installed"] is False and report["death_signal"] == 0, report
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert not gone_within(report["pid"], 1.0), "a stock orphan ended on its own: the test above proves nothing"
    finally:
        kill_all(proc, report["pid"])


@linux
def test_a_worker_whose_engine_core_died_before_the_install_ends_itself():
    proc, report = run_child("late", "VllmWorker-0")
    try:
        os.kill(proc.pid, signal.SIGKILL)                    # before the worker's install() runs
        proc.wait(timeout=10)
        assert gone_within(report["pid"], 5), "an orphaned worker installed the patch and lived on"
    finally:
        kill_all(proc, report["pid"])


@linux
def test_other_processes_are_left_alone():
    proc, report = run_child("patched", "EngineCore_DP0")     # an engine core's child of another name
    try:
        assert report == {"pid": report["pid"], "installed": False, "death_signal": 0}
    finally:
        kill_all(proc, report["pid"])
    assert orphans.install() is False and orphans.death_signal() == 0   # this process: no multiprocessing parent
