"""One real `hylorada-serve` per test session: a subprocess on 127.0.0.1 with a free port, the demo adapters
(LoRA, converted DoRA, exported HyLoRADA) in a temporary DIR/, an API key and an admin key (given through
HYLORADA_API_KEY / HYLORADA_ADMIN_KEY; the servers tests start of their own get them as flags). Every wait is bounded.

The server fixture is only built by the modules that use it (they are marked `vllm`); test_store.py needs no
engine. test_server_shutdown.py (collected after test_server.py) sends SIGTERM to the shared server.
Start / ready / stop / free port: bench/proc.py, the one process helper bench/ uses too.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.proc import free_port, http_ok, launch, session_pids, wait_ready   # noqa: F401  (session_pids: tests)
from bench.proc import stop as proc_stop

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
    keys: str = "flags"             # how the API and admin keys were given: "flags" or "env"
    exit_code: list = field(default_factory=list)

    def log_tail(self, n: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(line for line in lines[-n:])


def stop(server: Server, sig=signal.SIGTERM, timeout: float = 90) -> int | None:
    """Signal the server, wait (bounded); kill the whole session if it overstays. Returns the exit code."""
    return proc_stop(server.proc, sig, timeout_s=timeout, settle_s=15)[0]


def start(root: Path, adapters: Path, base: Path, spare: Path, extra: tuple[str, ...] = (),
          keys: str = "flags") -> Server:
    """Start hylorada-serve and wait (bounded) until /health answers 200. keys="flags": --api-key/--admin-key;
    keys="env": HYLORADA_API_KEY/HYLORADA_ADMIN_KEY in its environment and no key on its command line."""
    port = free_port()
    log = root / f"server-{port}.log"
    cmd = [sys.executable, "-m", "hylorada_serve.cli", "--base", str(base), "--adapters", str(adapters),
           "--port", str(port), "--stable-seconds", "1",
           "--poll-interval", "0.2", "--max-loras", "4", "--max-cpu-loras", "8",
           "--dtype", "float32", "--max-model-len", "512", "--max-num-seqs", "8", "--shutdown-timeout", "10",
           "--kv-cache-memory-bytes", str(KV_BYTES), *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYLORADA_") or not k.endswith("_KEY")}
    env.update(VLLM_HOST_IP="127.0.0.1", PYTHONUNBUFFERED="1")
    if keys == "env":
        env.update(HYLORADA_API_KEY=API_KEY, HYLORADA_ADMIN_KEY=ADMIN_KEY)
    else:
        cmd += ["--api-key", API_KEY, "--admin-key", ADMIN_KEY]
    proc = launch(cmd, log, env=env, cwd=Path(__file__).resolve().parents[2])
    srv = Server(f"http://127.0.0.1:{port}", proc, base, adapters, log, spare, keys)
    why = wait_ready(proc, lambda: http_ok(srv.url + "/health"), START_TIMEOUT_S)
    if why is not None:
        stop(srv)
        pytest.fail(f"hylorada-serve {why} during start-up:\n{srv.log_tail()}")
    return srv


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
    srv = start(root, fresh_adapters(root, built), base, built, keys="env")    # the servers of their own: flags
    try:
        yield srv
    finally:
        srv.exit_code.append(stop(srv))
