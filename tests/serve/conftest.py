"""One real `hylorada-serve` per test session: a subprocess on 127.0.0.1 with a free port, the demo adapters
(LoRA, converted DoRA, exported HyLoRADA) in a temporary DIR/, an API key and an admin key. Every wait is bounded.

The server fixture is only built by the modules that use it (they are marked `vllm`); test_store.py needs no
engine. test_server_shutdown.py (collected after test_server.py) sends SIGTERM to the shared server.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

API_KEY, ADMIN_KEY = "test-inference-key", "test-admin-key"
START_TIMEOUT_S = 300
KV_BYTES = 512 << 20                # the tiny model needs little; the machine is shared


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    base: Path
    adapters: Path
    log: Path
    spare: Path                     # adapter folders not in DIR/ (sources for hot-swap tests)
    exit_code: list = field(default_factory=list)

    def log_tail(self, n: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(line for line in lines[-n:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Processes still alive in the server's session (it is started with start_new_session=True)."""
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


def stop(server: Server, sig=signal.SIGTERM, timeout: float = 90) -> int | None:
    """Signal the server, wait (bounded); kill the whole session if it overstays. Returns the exit code."""
    if server.proc.poll() is None:
        server.proc.send_signal(sig)
        try:
            server.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    sid = server.proc.pid
    deadline = time.time() + 15
    while session_pids(sid) and time.time() < deadline:
        time.sleep(0.5)
    for pid in session_pids(sid):                        # never leave engine processes behind
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return server.proc.poll()


def start(root: Path, adapters: Path, base: Path, spare: Path, extra: tuple[str, ...] = ()) -> Server:
    """Start hylorada-serve and wait (bounded) until /health answers 200."""
    import httpx

    port = free_port()
    log = root / f"server-{port}.log"
    cmd = [sys.executable, "-m", "hylorada_serve.cli", "--base", str(base), "--adapters", str(adapters),
           "--port", str(port), "--api-key", API_KEY, "--admin-key", ADMIN_KEY, "--stable-seconds", "1",
           "--poll-interval", "0.2", "--max-loras", "4", "--max-cpu-loras", "8",
           "--dtype", "float32", "--max-model-len", "512", "--max-num-seqs", "8", "--shutdown-timeout", "10",
           "--kv-cache-memory-bytes", str(KV_BYTES), *extra]
    env = {**os.environ, "VLLM_HOST_IP": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=Path(__file__).resolve().parents[2])
    srv = Server(f"http://127.0.0.1:{port}", proc, base, adapters, log, spare)
    deadline = time.time() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            stop(srv)
            pytest.fail(f"hylorada-serve exited with {proc.returncode} during start-up:\n{srv.log_tail()}")
        if time.time() > deadline:
            stop(srv)
            pytest.fail(f"hylorada-serve not healthy after {START_TIMEOUT_S} s:\n{srv.log_tail()}")
        try:
            if httpx.get(srv.url + "/health", timeout=2).status_code == 200:
                return srv
        except httpx.HTTPError:
            pass
        time.sleep(1)


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(root, base, built demo adapters) — built once per session."""
    from hylorada_serve.demo import prepare

    root = tmp_path_factory.mktemp("serve")
    base, built = prepare(root / "cache")
    return root, base, built


BROKEN = {"broken-bytes": "random bytes instead of safetensors", "broken-pickle": "only a pickle .bin",
          "broken-empty": "an empty folder"}


def fresh_adapters(root: Path, built: Path) -> Path:
    """DIR/ with the three demo adapters and three broken ones (the server must start and refuse those)."""
    adapters = Path(tempfile.mkdtemp(prefix="adapters-", dir=root))
    for name in ("demo-lora", "demo-dora", "demo-hylorada"):
        shutil.copytree(built / name, adapters / name)
    shutil.copytree(built / "demo-lora", adapters / "broken-bytes")
    (adapters / "broken-bytes" / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    (adapters / "broken-pickle").mkdir()
    shutil.copy(built / "demo-lora" / "adapter_config.json", adapters / "broken-pickle")
    (adapters / "broken-pickle" / "adapter_model.bin").write_bytes(b"\x80\x04\x95 not to be unpickled")
    (adapters / "broken-empty").mkdir()
    return adapters


@pytest.fixture(scope="package")
def server(demo_files) -> Server:
    root, base, built = demo_files
    srv = start(root, fresh_adapters(root, built), base, built)
    try:
        yield srv
    finally:
        srv.exit_code.append(stop(srv))
