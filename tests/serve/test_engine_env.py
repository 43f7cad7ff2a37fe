"""hylorada-serve bounds oneDNN's primitive cache in its engine processes (the soak's worker memory growth,
docs/reliability.md): the setting must reach the spawned engine core and worker, and an operator's value wins."""
from __future__ import annotations

from pathlib import Path

from hylorada_serve.launch import ONEDNN_CACHE, cpu_binds, engine_env

from .conftest import session_pids


def test_engine_env_sets_the_cache_bound_unless_the_operator_did():
    assert engine_env({}) == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": ONEDNN_CACHE}
    assert engine_env({"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}) == {}


def test_engine_processes_inherit_the_cache_bound(server):
    """Read from /proc: vLLM spawns the engine core and worker after main() set the variable."""
    seen = {}
    for pid in session_pids(server.proc.pid):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        except OSError:
            continue
        if name.startswith("VLLM::"):
            seen[name] = env.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    assert any(n.startswith("VLLM::Worker") for n in seen), seen
    assert all(v == ONEDNN_CACHE for v in seen.values()), seen


def test_tensor_parallel_workers_get_their_own_cores_when_numa_nodes_are_fewer():
    assert cpu_binds([0, 1], 2, nodes=1) == "0|1"
    assert cpu_binds(list(range(8)), 2, nodes=1) == "0-3|4-7"
    assert cpu_binds([0, 1, 2, 4, 5, 6, 7], 2, nodes=1) == "0-2,4|5-7"
    assert cpu_binds(list(range(8)), 2, nodes=2) is None       # vLLM's auto: one node per worker
    assert cpu_binds([0], 2, nodes=1) is None                  # fewer cores than workers: vLLM's own error
    assert cpu_binds(list(range(8)), 1, nodes=1) is None


def test_the_short_tensor_parallel_flag_sets_the_binding_too(monkeypatch):
    import hylorada_serve.launch as launch
    from hylorada_serve.config import ServeConfig
    monkeypatch.setattr(launch, "numa_nodes", lambda: 1)
    monkeypatch.setattr(launch.os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    for args in (("-tp", "2"), ("-tp=2",), ("--tensor-parallel-size", "2")):
        env = {}
        monkeypatch.setattr(launch.os, "environ", env)          # this process's own environment stays as it is
        launch.set_process_env(ServeConfig(base="b", adapters="d", vllm_args=args))
        assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1|2-3", args
    env = {"VLLM_CPU_OMP_THREADS_BIND": "mine"}
    monkeypatch.setattr(launch.os, "environ", env)
    launch.set_process_env(ServeConfig(base="b", adapters="d", vllm_args=("-tp", "2")))
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "mine"
