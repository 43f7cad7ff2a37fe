"""Server processes for benchmarks and tests: a free port, start, wait until ready, stop — the one copy.

    port = free_port()
    proc = launch(cmd, log_path, env=..., cwd=...)        # own session = own process group; stdout+stderr -> log
    why = wait_ready(proc, lambda: http_ok(url + "/health"), timeout_s=300)   # None once ready, else the reason
    code, left = stop(proc)                              # SIGTERM, bounded waits, then SIGKILL whatever is left

A server started with `launch` leads its own session, so its engine children (vLLM's engine core and workers) are
found by session id (`session_pids`) and killed with it: nothing outlives `stop`, whatever the server did.
Every wait is bounded. stdlib only (tests/serve and bench/ both use it).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd: list[str], log: Path, env: dict | None = None, cwd: Path | str | None = None,
           header: str | None = None) -> subprocess.Popen:
    """Start cmd as the leader of a new session (its own process group), stdout and stderr to `log`
    (truncated; `header` written first). env=None inherits this process's environment."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        if header is not None:
            fh.write(header.encode() + b"\n\n")
            fh.flush()
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """GET url answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status == 200
    except (OSError, ValueError):            # refused, timed out, non-2xx (HTTPError is an OSError)
        return False


def lists_models(url: str, models: list[str], timeout_s: float = 2.0) -> bool:
    """GET url/v1/models lists every name in `models` (an OpenAI-compatible server has loaded them)."""
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=timeout_s) as r:
            have = {m["id"] for m in json.loads(r.read())["data"]}
        return set(models) <= have
    except (OSError, ValueError, KeyError):
        return False


def wait_ready(proc: subprocess.Popen, ready: Callable[[], bool], timeout_s: float, poll_s: float = 1.0) -> str | None:
    """Call ready() every poll_s seconds. None once it returns True; otherwise why not: the process exited, or
    timeout_s passed (the caller decides whether that is an exception, a test failure or an exit)."""
    deadline = time.time() + timeout_s
    while not ready():
        if proc.poll() is not None:
            return f"exited with {proc.returncode}"
        if time.time() > deadline:
            return f"not ready after {timeout_s:.0f} s"
        time.sleep(poll_s)
    return None


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is `sid` — for a `launch`ed server, it and its children."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if os.getsid(int(p.name)) == sid and int(p.name) != os.getpid():
                    state = (p / "stat").read_text().split(") ")[1].split()[0]
                    if state != "Z":
                        out.append(int(p.name))
            except (OSError, IndexError):
                pass
    return out


def session_rss_mb(sid: int) -> tuple[float, int, dict]:
    """(sum of VmRSS in MiB over the live processes of session `sid`, process count, MiB by process name). A
    `launch`ed server leads its own session: this is the API server + engine core + workers."""
    total, n, by = 0, 0, {}
    for pid in session_pids(sid):
        try:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                          if ":" in line)
            kb = int(status["VmRSS"].split()[0])
        except (OSError, ValueError, KeyError):
            continue
        total, n = total + kb, n + 1
        name = status["Name"].strip()
        by[name] = round(by.get(name, 0) + kb / 1024, 1)
    return total / 1024, n, by


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 90.0, group: bool = False,
         settle_s: float = 15.0) -> tuple[int | None, int]:
    """Stop a `launch`ed server; returns (its exit code, processes of its session still alive before the SIGKILL).

    1. If it is running, send `sig` to the leader (group=False: the server shuts its engine down itself, and its
       exit code says whether that went well) or to the whole process group (group=True), and wait up to timeout_s.
    2. Wait up to settle_s for the rest of its session to exit.
    3. SIGKILL the group and every process still in the session; reap the leader and wait for them to be gone
       (bounded).
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout_s)
    deadline = time.time() + settle_s
    while session_pids(proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    left = session_pids(proc.pid)
    if proc.poll() is None or left:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in left:                     # a child that left the group is still in the session
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    deadline = time.time() + 10              # SIGKILL is delivered at once, the exit (freeing memory) is not
    while left and session_pids(proc.pid) and time.time() < deadline:
        time.sleep(0.05)
    return proc.poll(), len(left)
