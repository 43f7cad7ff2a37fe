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
    with running(spec, port, log, ready_timeout_s=60) as (url, _, _sid):
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


def test_the_nodelay_system_is_upstream_plus_tcp_nodelay_only(tmp_path):
    """vllm-lora-nodelay = vllm-lora's command and env, plus the shim on PYTHONPATH; in a process started that way
    every uvicorn connection gets TCP_NODELAY (checked on a real connection, in a subprocess: the shim patches
    uvicorn's class for its whole process)."""
    from bench.compare.servers import NODELAY_SHIM, spec_for
    ad = {"peft": {"a0": tmp_path}}
    plain = spec_for("vllm-lora", tmp_path, 1, ad, tmp_path, 8, 8)
    shim = spec_for("vllm-lora-nodelay", tmp_path, 1, ad, tmp_path, 8, 8)
    assert shim.cmd == plain.cmd and {k: v for k, v in shim.env.items() if k != "PYTHONPATH"} == plain.env
    assert shim.env["PYTHONPATH"].split(os.pathsep)[0] == str(NODELAY_SHIM)
    probe = textwrap.dedent("""
        import asyncio, socket
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        seen = []
        async def main():
            class P(asyncio.Protocol):
                def connection_made(self, t):
                    s = t.get_extra_info("socket")
                    before = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                    try:                                  # the shim sets NODELAY before uvicorn's own body
                        HttpToolsProtocol.connection_made(object.__new__(HttpToolsProtocol), t)
                    except Exception:                     # (which needs a configured protocol)
                        pass
                    seen.append((before, s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
            ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen()
            srv = await asyncio.get_running_loop().create_server(P, sock=ls)
            r, w = await asyncio.open_connection(*ls.getsockname()); await asyncio.sleep(0.2)
        asyncio.run(main())
        print(seen)
    """)
    env = os.environ | {"PYTHONPATH": shim.env["PYTHONPATH"]}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert out.stdout.strip() == "[(0, 1)]", out.stdout + out.stderr
    env = os.environ | {"PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert out.stdout.strip() == "[(0, 0)]", out.stdout + out.stderr     # without the shim: Nagle stays on


def test_the_hostfix_system_adds_the_spin_nap_and_nothing_else(tmp_path):
    """vllm-lora-hostfix = vllm-lora-nodelay plus HYLORADA_BENCH_SPIN_NAP_US: in a process started that way (as
    vLLM's engine processes inherit it) os.sched_yield — the only yield vLLM's shm-ring waits call — is
    patches/spin_nap.py's nap: a thread calling it in a loop uses a small share of a core. Without the variable
    the shim leaves it alone."""
    from bench.compare.servers import spec_for
    ad = {"peft": {"a0": tmp_path}}
    nodelay = spec_for("vllm-lora-nodelay", tmp_path, 1, ad, tmp_path, 8, 8)
    fixed = spec_for("vllm-lora-hostfix", tmp_path, 1, ad, tmp_path, 8, 8)
    assert fixed.cmd == nodelay.cmd
    assert {k: v for k, v in fixed.env.items() if k != "HYLORADA_BENCH_SPIN_NAP_US"} == nodelay.env
    assert fixed.env["HYLORADA_BENCH_SPIN_NAP_US"] == "50"
    probe = textwrap.dedent("""
        import os, time
        from vllm.distributed.utils import sched_yield
        w0, c0 = time.monotonic(), time.thread_time()
        while time.monotonic() - w0 < 0.3:
            sched_yield()
        print(os.sched_yield.__name__, round((time.thread_time() - c0) / (time.monotonic() - w0), 2))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         env=os.environ | {k: v for k, v in fixed.env.items() if k != "VLLM_PLUGINS"}, cwd=ROOT)
    name, share = out.stdout.split()
    assert name == "nap" and float(share) < 0.5, out.stdout + out.stderr
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         env=os.environ | {"PYTHONPATH": nodelay.env["PYTHONPATH"]}, cwd=ROOT)
    assert out.stdout.split()[0] == "sched_yield", out.stdout + out.stderr
