"""One replica: a Ray Serve deployment that runs one hylorada-serve (its own engine, store, watcher and keys) on
127.0.0.1 at a free port, and forwards to it the requests Serve routes here.

    __init__    start `python -m hylorada_serve.cli ARGV --host 127.0.0.1 --port P` (its own session; it gets
                SIGTERM if this actor's process dies), wait (bounded) for its /health, register with the registry
    forward     (method, path, query, headers, body) -> async generator: first {"status", "headers", "replica",
                "held"}, then the body's chunks as they come (streams stay streams). The request's `model` is
                Serve's multiplexed model id: get_model is Serve's per-replica LRU of --models-per-replica adapters,
                and "held" says whether this replica held the adapter before this request (the affinity hit)
    check_health  Serve calls it every few seconds: the server process alive and /health 200, else Serve
                replaces this replica (a new engine, the same DIR/)
    commands    the registry's broadcasts: "http" (one request to the local server, answer in full) and "stats"
                (this replica's counts, and its /v1/models as its own API key sees it)

A failure to reach the local server before any answer (connection refused or cut: the engine died or is being
replaced) raises ReplicaUnavailable, which the ingress retries on a replica Serve still routes to.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from ray import serve

from .argv import with_audit_suffix

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te", "trailer", "upgrade"}
START_POLL_S = 1.0


class ReplicaUnavailable(RuntimeError):
    """The local server could not be reached before it answered (retry elsewhere)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    """In the child, before exec: its own session, and SIGTERM when the replica's process dies (Linux)."""
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)     # PR_SET_PDEATHSIG


def headers_out(headers) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() not in HOP]


class Replica:
    async def __init__(self, argv: list[str], env: dict, registry_name: str, namespace: str,
                     start_timeout_s: float, log_dir: str):
        import ray
        self.tag = serve.get_replica_context().replica_id.unique_id
        self.env = dict(env)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests = self.adapter_requests = self.loads = 0
        self.log = Path(log_dir or Path(tempfile.gettempdir()) / "hylorada-replicas") / f"replica-{self.tag}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "hylorada_serve.cli", *with_audit_suffix(argv, self.tag),
               "--host", "127.0.0.1", "--port", str(self.port)]
        child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        child_env.setdefault("VLLM_HOST_IP", "127.0.0.1")
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=child_env,
                                         preexec_fn=_die_with_parent)
        self.client = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(None, connect=5.0),
                                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
        self.tasks: set[asyncio.Task] = set()
        self.registry = None
        deadline = time.monotonic() + start_timeout_s
        while not await self._healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.tag}: hylorada-serve exited with {self.proc.returncode} "
                                   f"during start-up; its log: {self.log}\n{self._tail()}")
            if time.monotonic() > deadline:
                self._stop()
                raise RuntimeError(f"replica {self.tag}: not healthy after {start_timeout_s:g} s; log {self.log}")
            await asyncio.sleep(START_POLL_S)
        self.registry = ray.get_actor(registry_name, namespace=namespace)
        await self.registry.register.remote(self.tag, self._info())
        self.poller = asyncio.get_running_loop().create_task(self._poll())

    def _tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""

    def _info(self) -> dict:
        return {"replica": self.tag, "port": self.port, "pid": self.proc.pid, "node": socket.gethostname(),
                "log": str(self.log), "requests": self.requests, "adapter_requests": self.adapter_requests,
                "adapter_loads": self.loads}

    async def _models(self) -> dict:
        """This replica's /v1/models as its own API key sees it (a status where that is refused)."""
        key = self.env.get("HYLORADA_API_KEY")
        try:
            r = await self.client.get("/v1/models", headers={"Authorization": f"Bearer {key}"} if key else {},
                                      timeout=30.0)
            return r.json() if r.status_code == 200 else {"status": r.status_code}
        except (httpx.HTTPError, ValueError) as e:
            return {"status": 502, "error": f"{type(e).__name__}: {e}"}

    async def _healthy(self) -> bool:
        try:
            return (await self.client.get("/health", timeout=5.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def _load(self, model_id: str) -> str:
        """Serve calls this (as get_model) the first time this replica sees `model_id` and again after its LRU
        evicted it: the adapter now counts as held here. Loading is the local server's (its store and the
        engine's CPU cache of --max-cpu-loras, sized alike by argv.replica_argv)."""
        self.loads += 1
        return model_id

    async def forward(self, method: str, path: str, query: str, headers: list, body: bytes):
        model = serve.get_multiplexed_model_id()
        held = None
        self.requests += 1
        req = self.client.build_request(method, path + (f"?{query}" if query else ""), headers=headers,
                                        content=body)
        try:
            resp = await self.client.send(req, stream=True)
        except httpx.TransportError as e:
            raise ReplicaUnavailable(f"replica {self.tag}: {type(e).__name__}: {e}") from None
        if model and resp.status_code < 400:        # only an accepted request counts as holding the adapter:
            before = self.loads                     # a refused key or an unknown name must not evict one
            await self.get_model(model)
            held = self.loads == before
            self.adapter_requests += 1
        try:
            yield {"status": resp.status_code, "headers": headers_out(resp.headers.multi_items()),
                   "replica": self.tag, "held": held}
            async for chunk in resp.aiter_raw():
                yield chunk
        finally:
            await resp.aclose()

    async def check_health(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"replica {self.tag}: hylorada-serve exited with {self.proc.returncode}")
        if not await self._healthy():
            raise RuntimeError(f"replica {self.tag}: /health is not 200")

    async def _poll(self):
        while True:
            try:
                cmd = await self.registry.next_command.remote(self.tag, 5.0)
                if cmd is None:
                    continue
                if cmd.get("kind") == "register":
                    await self.registry.register.remote(self.tag, self._info())
                    continue
                task = asyncio.get_running_loop().create_task(self._run(cmd))
                self.tasks.add(task)                             # asyncio keeps only weak references
                task.add_done_callback(self.tasks.discard)
            except asyncio.CancelledError:
                raise
            except Exception:                                    # the registry is restarting: try again
                await asyncio.sleep(1.0)

    async def _run(self, cmd: dict):
        try:
            if cmd["kind"] == "stats":
                result = {"status": 200, "body": {**self._info(), "models": await self._models()}}
            else:
                r = await self.client.request(cmd["method"], cmd["path"], headers=cmd.get("headers") or [],
                                              content=cmd.get("body") or b"", timeout=cmd.get("timeout_s", 30.0))
                result = {"status": r.status_code, "body": r.content,
                          "headers": headers_out(r.headers.multi_items())}
        except Exception as e:                                    # noqa: BLE001 — reported, never raised here
            result = {"status": 502, "error": f"replica {self.tag}: {type(e).__name__}: {e}"}
        await self.registry.answer.remote(cmd["id"], self.tag, result)

    def _stop(self):
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)

    def __del__(self):
        if self.registry is not None:                   # leave the broadcasts at once, not after STALE_S
            with contextlib.suppress(Exception):
                self.registry.forget.remote(self.tag)
        self._stop()


def deployment_class(models_per_replica: int) -> type:
    """Replica with Serve's multiplexing LRU of `models_per_replica` adapters (a class made here is shipped to the
    replicas by value, so the size travels with it)."""
    class HyloradaReplica(Replica):
        @serve.multiplexed(max_num_models_per_replica=models_per_replica)
        async def get_model(self, model_id: str) -> str:
            return await self._load(model_id)
    return HyloradaReplica
