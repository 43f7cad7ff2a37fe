"""bench.compare.servers.running: a SIGTERM'd benchmark driver still stops its servers' whole process groups (the
engine processes of a vLLM server are children in the same group). A fake server, no engine."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.proc import free_port

ROOT = Path(__file__).resolve().parents[3]

FAKE_SERVER = textwrap.dedent("""
    import http.server, json, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])   # an 'engine' child
    print("CHILD", child.pid, flush=True)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"data": [{"id": "m"}]}).encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")

DRIVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from bench.compare.servers import ServerSpec, running, stop_servers_on_sigterm
    stop_servers_on_sigterm()
    port, log = int(sys.argv[1]), Path(sys.argv[2])
    spec = ServerSpec("fake", [sys.executable, "-c", sys.argv[3], str(port)], ["m"])
    with running(spec, port, log, ready_timeout_s=60) as (url, _):
        print("READY", flush=True)
        time.sleep(120)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:                # a zombie has exited
        return f.read().split(") ")[-1][0] != "Z"


def test_sigterm_to_the_driver_stops_the_server_and_its_children(tmp_path):
    log = tmp_path / "server.log"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(free_port()), str(log), FAKE_SERVER], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "READY"
        child = int(next(ln for ln in log.read_text().splitlines() if ln.startswith("CHILD")).split()[1])
        assert _alive(child)
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=40) == 128 + signal.SIGTERM
        deadline = time.time() + 10
        while _alive(child) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "the server's child outlived a SIGTERM'd driver"
    finally:
        driver.kill()


def test_one_dtype_reaches_every_system(tmp_path):
    """--dtype is given to every system alike (vLLM's "auto" would pick bfloat16 for a float32 checkpoint here)."""
    from bench.compare.servers import SYSTEMS, spec_for
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text("{}")
    ad = {k: {"a0": src} for k in ("hylorada", "served", "peft")}
    for system in SYSTEMS:
        cmd = spec_for(system, tmp_path / "base", 9, ad, tmp_path / "work", 8, 8, dtype="bfloat16").cmd
        assert cmd[cmd.index("--dtype") + 1] == "bfloat16" and cmd.count("--dtype") == 1, (system, cmd)


def test_resolve_base_refuses_a_folder_that_is_not_a_model(tmp_path):
    from bench.compare.adapters import resolve_base
    with pytest.raises(SystemExit, match="config.json"):
        resolve_base(str(tmp_path), tmp_path / "cache")
    (tmp_path / "config.json").write_text("{}")
    assert resolve_base(str(tmp_path), tmp_path / "cache") == (tmp_path.resolve(), tmp_path / "cache" / tmp_path.name)
