"""bench.proc: start / ready / stop of a fake server that has a child (the 'engine'), leader-only and group
signals, a server that never gets ready, one that exits at start-up, and free_port. No engine."""
from __future__ import annotations

import signal
import socket
import sys
import textwrap
import time

import pytest

from bench.proc import free_port, http_ok, launch, lists_models, session_pids, session_rss_mb, stop, wait_ready

# argv: port, what the leader does on SIGTERM ("exit": exits 0 and leaves its child behind; "ignore": stays)
FAKE = textwrap.dedent("""
    import http.server, json, signal, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    print("CHILD", child.pid, flush=True)
    if sys.argv[2] == "exit":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    else:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"data": [{"id": "m"}]}).encode()
            self.send_response(200 if self.path in ("/health", "/v1/models") else 404)
            self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")


def _start(tmp_path, on_term: str):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "logs" / "fake.log"
    proc = launch([sys.executable, "-c", FAKE, str(port), on_term], log, header="fake server")
    assert wait_ready(proc, lambda: http_ok(url + "/health"), 60, poll_s=0.2) is None
    child = int(next(ln for ln in log.read_text().splitlines() if ln.startswith("CHILD")).split()[1])
    return proc, url, log, child


def test_free_port_is_bindable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))


def test_leader_exits_on_sigterm_and_its_lingering_child_is_killed(tmp_path):
    proc, url, log, child = _start(tmp_path, "exit")
    assert log.read_text().startswith("fake server\n\n")
    assert lists_models(url, ["m"]) and not lists_models(url, ["m", "other"])
    assert not http_ok(url + "/nothing-here")
    assert sorted(session_pids(proc.pid)) == sorted([proc.pid, child])
    code, left = stop(proc, timeout_s=30, settle_s=1)
    assert code == 0, "the leader got SIGTERM and exited by itself"
    assert left == 1, "SIGTERM went to the leader only: its child was still alive after settle_s"
    assert session_pids(proc.pid) == [], "stop returned before the child it SIGKILLed was gone"


def test_a_leader_that_ignores_sigterm_is_killed_with_its_group(tmp_path):
    proc, _, _, child = _start(tmp_path, "ignore")
    t0 = time.time()
    code, left = stop(proc, timeout_s=1, settle_s=0)
    assert code == -signal.SIGKILL and left == 2 and time.time() - t0 < 15
    assert session_pids(proc.pid) == []


def test_group_sigterm_reaches_the_children(tmp_path):
    proc, _, _, child = _start(tmp_path, "exit")
    code, left = stop(proc, timeout_s=30, group=True, settle_s=10)
    assert code == 0 and left == 0, "the child got the group's SIGTERM and exited within settle_s"


def test_wait_ready_says_why_not(tmp_path):
    proc = launch([sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path / "x.log")
    assert wait_ready(proc, lambda: False, 30, poll_s=0.1) == "exited with 3"
    stop(proc, settle_s=0)
    proc = launch([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "y.log")
    try:
        assert wait_ready(proc, lambda: False, 0.3, poll_s=0.1) == "not ready after 0 s"
    finally:
        assert stop(proc, timeout_s=5, settle_s=0)[0] == -signal.SIGTERM


def test_session_rss_counts_the_leader_and_its_children(tmp_path):
    hold = "import sys, time; b = b'x' * ({mib} << 20); print('HELD', flush=True); time.sleep(120)"
    leader = ("import subprocess, sys, time; "
              f"subprocess.Popen([sys.executable, '-c', {hold.format(mib=64)!r}]); " + hold.format(mib=32).split("; ", 1)[1])
    log = tmp_path / "rss.log"
    proc = launch([sys.executable, "-c", leader], log, header="rss")
    try:
        assert wait_ready(proc, lambda: log.read_text().count("HELD") == 2, 60, poll_s=0.1) is None
        mib, n, by = session_rss_mb(proc.pid)
        assert n == 2 and 96 <= mib < 400, (mib, n, by)                  # 64 + 32 MiB written, two interpreters
        assert sum(by.values()) == pytest.approx(mib, abs=1)                # MiB by process name adds up
    finally:
        stop(proc, group=True, settle_s=0.0)
    assert session_rss_mb(proc.pid)[1] == 0
