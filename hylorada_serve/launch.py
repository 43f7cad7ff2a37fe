"""Run hylorada-serve from a ServeConfig: environment, vLLM's engine and OpenAI app, our store/watcher/admin, the
serve loop, shutdown and the exit code.

    run(config) → engine environment → (demo files) → keys file (refused before the engine starts) → vLLM's args →
    serve(): engine up → app + install() → first pass planned, loaded in the background (startup.py) → watcher →
    serve_http once loaded or after --startup-wait, until SIGINT/SIGTERM (vLLM drains) or engine death (exit 1) →
    free published copies
"""
from __future__ import annotations

import asyncio
import glob
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from hylorada_patches.env import CHECKED_KEY

from .config import KV_SIZING_FLAGS, ServeConfig, flag_given, flag_value

log = logging.getLogger("hylorada_serve")

ONEDNN_CACHE = "128"


def engine_env(env) -> dict:
    """Environment the engine processes need, set before vLLM spawns them (they inherit it; an operator's own
    value wins). ONEDNN_PRIMITIVE_CACHE_CAPACITY: vLLM's CPU linear layers run oneDNN matmuls, and oneDNN keeps
    every compiled primitive, one per (weight shape, tokens in the step), in a process-wide cache of 1,024 by
    default, besides the 32 token counts each layer's own handler caches. Measured (docs/reliability.md, Soak):
    offline, 5 GEMM shapes x 400 token counts grew RSS by 490 MiB with 1,024 and 91 MiB with 128; in the 30-min
    soak the vLLM worker grew 3.3 MiB per 1000 requests with the default (stock vLLM: 6.8) and 0.8 with 128."""
    return {k: v for k, v in {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": ONEDNN_CACHE}.items() if k not in env}


def set_process_env(config: ServeConfig | None = None) -> None:
    """This process's environment, before vLLM is imported (the engine processes it spawns inherit it)."""
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    os.environ["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "0"     # vLLM's path-taking load route stays off
    os.environ["VLLM_ENABLE_RESPONSES_API_STORE"] = "0"      # no background responses (they outlive admission) and
    #                                                          no store that keeps every response in memory
    os.environ["VLLM_SKIP_MODEL_NAME_VALIDATION"] = "0"      # every `model` is checked (tenants' scopes rely on it)
    os.environ["VLLM_SERVER_DEV_MODE"] = "0"                 # no /sleep, /collective_rpc, ... (routes.py: OFF anyway)
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    os.environ.setdefault("VLLM_MAX_N_SEQUENCES", "64")     # n / best_of above this are 400s (vLLM: 16384)
    os.environ.update(engine_env(os.environ))
    os.environ[CHECKED_KEY] = secrets.token_hex(32)        # this server's stamp key (publish.check, patches/loading.py)
    if config is not None and config.max_cpu_lora_mb is not None:       # hylorada_patches/residency.py
        os.environ["HYLORADA_CPU_LORA_BYTES"] = str(int(config.max_cpu_lora_mb * (1 << 20)))
    tp = None if config is None else (flag_value(config.vllm_args, "--tensor-parallel-size")
                                      or _short_value(config.vllm_args, "-tp"))
    if tp and tp.isdigit() and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        binds = cpu_binds(sorted(os.sched_getaffinity(0)), int(tp), numa_nodes())
        if binds:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = binds


def _short_value(args, flag: str) -> str | None:
    """The value of vLLM's short form `-tp N` / `-tp=N` (flag_value reads `--` options only)."""
    found = None
    for i, a in enumerate(args):
        name, eq, v = a.partition("=")
        if name == flag:
            found = v if eq else (args[i + 1] if i + 1 < len(args) else None)
    return found


def numa_nodes() -> int:
    return max(1, len(glob.glob("/sys/devices/system/node/node[0-9]*")))


def cpu_binds(cpus: list[int], workers: int, nodes: int) -> str | None:
    """VLLM_CPU_OMP_THREADS_BIND for `workers` tensor-parallel CPU workers when there are fewer NUMA nodes than
    workers (vLLM's own "auto" binds one node per worker and refuses to start otherwise): the allowed cores split
    into `workers` contiguous groups, "0-7|8-15". None when vLLM's default works, or there are fewer cores than
    workers (vLLM's error then says so)."""
    if workers <= 1 or nodes >= workers or len(cpus) < workers:
        return None
    size, extra = divmod(len(cpus), workers)
    groups, at = [], 0
    for w in range(workers):
        n = size + (w < extra)
        groups.append(cpus[at:at + n])
        at += n

    def compact(g):
        runs, start = [], g[0]
        for a, b in zip(g, g[1:] + [None]):
            if b != a + 1:
                runs.append(f"{start}-{a}" if a != start else f"{a}")
                start = b
        return ",".join(runs)
    return "|".join(compact(g) for g in groups)


def engine_argv(config: ServeConfig, rope: list[str] = ()) -> list[str]:
    """vLLM's command line: our options, our defaults for what `config.vllm_args` leaves unset (KV cache size,
    shutdown timeout, the `rope` overrides: context_overrides), then the pass-through options."""
    rest = list(config.vllm_args)
    argv = ["--model", str(config.base), "--served-model-name", config.served_name, "--host", config.host,
            "--port", str(config.port), "--enable-lora", "--max-loras", str(config.max_loras),
            "--max-lora-rank", str(config.max_lora_rank)]
    if config.max_cpu_loras is not None:
        argv += ["--max-cpu-loras", str(config.max_cpu_loras)]
    if not flag_given(rest, *KV_SIZING_FLAGS):
        argv += ["--kv-cache-memory-bytes", str(config.kv_cache_memory_bytes)]
    if not flag_given(rest, "--shutdown-timeout"):
        argv += ["--shutdown-timeout", str(config.shutdown_timeout)]
    if not flag_given(rest, "--hf-overrides"):
        argv += list(rope)
    return argv + rest


def vllm_args(config: ServeConfig):
    """vLLM's own server/engine Namespace, parsed and validated by vLLM's parser."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    rope = [] if flag_given(config.vllm_args, "--hf-overrides") else context_overrides(config)
    args = make_arg_parser(FlexibleArgumentParser(prog="hylorada-serve")).parse_args(engine_argv(config, rope))
    validate_parsed_serve_args(args)
    return args


MAX_AUTO_CONTEXT_FACTOR = 8      # start-up adapters may make the engine hold at most this many times the base's length


def context_overrides(config: ServeConfig) -> list[str]:
    """--hf-overrides {"max_position_embeddings": N} for an engine that must hold more positions than the base:
    every adapter's RoPE table has N rows (hylorada_patches.rope) and vLLM's own max_model_len follows N.

    N is --max-model-len when the user gives one longer than the base; otherwise the longest context the
    start-up adapters in DIR/ ask for (publish.longest_context), bounded so that no adapter file can stop the
    engine from starting: at most MAX_AUTO_CONTEXT_FACTOR x the base's length and no more tokens than the KV cache
    holds (float32 estimate). Adapters that need more than N are refused with the reason, when they load."""
    from transformers import AutoConfig

    from .publish import longest_context

    try:
        base_cfg = AutoConfig.from_pretrained(config.base)
    except (OSError, ValueError):                 # no readable base: vLLM reports that itself, with its own words
        return []
    base_len = int(base_cfg.max_position_embeddings)
    asked = flag_value(config.vllm_args, "--max-model-len")
    if asked is not None:
        n = _positions(asked, base_len)
        reason = "--max-model-len"
    else:
        longest, count = longest_context(Path(config.adapters), base_cfg)
        bound = MAX_AUTO_CONTEXT_FACTOR * base_len
        if not flag_given(config.vllm_args, *KV_SIZING_FLAGS):
            bound = min(bound, config.kv_cache_memory_bytes // kv_bytes_per_token(base_cfg))
        n = max(base_len, min(longest, bound))
        reason = (f"the longest of {count} start-up adapter(s) asking for more than the base"
                  + (f", bounded from {longest}" if n < longest else ""))
    if n <= base_len:
        return []
    print(f"engine context: {n} positions ({reason}; the base's own: {base_len}); adapters needing more are "
          "refused", flush=True)
    return ["--hf-overrides", json.dumps({"max_position_embeddings": n})]


def _positions(value: str, base_len: int) -> int:
    """--max-model-len's value read by vLLM's own parser ('32k' = 32000, '32K' = 32768); the base's length for
    'auto' / -1, or for a value vLLM will refuse itself, with its own message."""
    from vllm.utils.argparse_utils import human_readable_int_or_auto
    try:
        n = human_readable_int_or_auto(value)
    except (ValueError, TypeError):
        return base_len
    return base_len if n < 0 else n


def kv_bytes_per_token(hf_config) -> int:
    """KV-cache bytes one token takes on this base in float32 (every layer's keys and values)."""
    heads = getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    return max(1, 2 * 4 * int(hf_config.num_hidden_layers) * int(heads) * int(head_dim))


async def serve(args, config: ServeConfig, keys=None) -> int:
    """Engine up → app (vLLM's) + our store/watcher/admin → serve until SIGINT/SIGTERM or engine death."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client_from_engine_args
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.launcher import serve_http, setup_server
    from vllm.lora.request import LoRARequest

    from . import gc_heap, metrics, residency, startup
    from .app import install
    from .audit import AuditLog
    from .http_bounds import bounded_protocol
    from .report import banner, report_adapters
    from .store import AdapterStore
    from .watcher import HotSwapper

    loop, me = asyncio.get_running_loop(), asyncio.current_task()
    for sig in (signal.SIGINT, signal.SIGTERM):   # during start-up: cancel (the engine context shuts it down);
        loop.add_signal_handler(sig, me.cancel)   # vLLM's serve_http installs its own drain handlers later
    store = AdapterStore(config.adapters, stable_seconds=config.stable_seconds)
    store.scan()                                   # start the stability clock while the engine loads
    listen_address, sock = setup_server(args, reuse_port=False)
    publish_root = tempfile.mkdtemp(prefix="hylorada-serve-")
    died = False
    try:
        async with build_async_engine_client_from_engine_args(AsyncEngineArgs.from_cli_args(args)) as engine:
            asked = mark_shutdown_requests(engine)
            tasks = await engine.get_supported_tasks()
            app = build_app(args, tasks, engine.model_config)
            await init_app_state(engine, app.state, args, tasks)

            def on_event(name: str, event: str) -> None:
                e = store.entries.get(name)
                metrics.on_event(name, event, e.current.number if e and e.current else None, len(store.serving()))

            swapper = HotSwapper(store, engine, publish_root, make_request=lambda n, uid, p: LoRARequest(n, uid, p),
                                 base_config=engine.model_config.hf_config, max_rank=args.max_lora_rank,
                                 on_event=on_event, base_dir=str(config.base), parallel=config.load_parallel,
                                 stamp_key=bytes.fromhex(os.environ.get(CHECKED_KEY, "")),
                                 min_free_disk=config.min_free_disk_mb << 20)
            audit = None if config.audit_log is None else AuditLog(
                config.audit_log, max_bytes=int(config.audit_log_mb * (1 << 20)), backups=config.audit_log_backups)
            install(app, swapper, config.api_key, config.admin_key, max_body_bytes=config.max_body_bytes,
                    metrics_key=config.metrics_key, keys=keys, audit=audit, validation_wait=config.validation_wait)
            own_log_handler()                      # again, after the engine's start-up configured logging
            backlog = await startup.begin(swapper)
            stop = asyncio.Event()
            watcher = asyncio.create_task(swapper.run(stop, config.poll_interval, config.watch_events,
                                                        config.rescan_interval))
            await startup.settle(swapper, backlog, config.startup_wait, config.poll_interval)
            report_adapters(store, pending=swapper.backlog)
            gc_once = asyncio.create_task(gc_heap.collect_after_freeze(stop))   # vLLM freezes the heap at start
            keys_watch = asyncio.create_task(keys.watch(stop) if keys is not None else stop.wait())
            resident = asyncio.create_task(residency.Published().watch(engine, store, stop))   # /metrics
            print(banner(listen_address, args.served_model_name[0], store, bool(config.api_key or keys)), flush=True)
            shutdown = await serve_http(app, sock=sock, host=args.host, port=args.port, log_level="warning",
                                        access_log=False, timeout_keep_alive=5,
                                        http=bounded_protocol(config.max_header_kb << 10, config.header_timeout),
                                        # vLLM has drained the engine for --shutdown-timeout before the HTTP server
                                        # stops; a stream still open then never ends: cancel it instead of waiting
                                        timeout_graceful_shutdown=2)
            died = engine.errored and not asked
            stop.set()
            for task in (watcher, backlog, resident):  # the engine is already stopped: wait on none of its calls
                task.cancel()
            await asyncio.gather(watcher, backlog, gc_once, keys_watch, resident, return_exceptions=True)
            if audit is not None:
                audit.close()
        await shutdown
    finally:
        sock.close()
        shutil.rmtree(publish_root, ignore_errors=True)
    if died:
        log.error("the engine died; exiting non-zero so a supervisor restarts the server")
        return 1
    return 0


def mark_shutdown_requests(engine) -> list:
    """A list that becomes non-empty once anyone asks the engine to shut down (vLLM's SIGINT/SIGTERM handler
    does, before it stops the HTTP server). An engine that errored without being asked died on its own."""
    asked: list = []
    shutdown = engine.shutdown

    def shutdown_and_mark(*a, **kw):
        asked.append(True)
        return shutdown(*a, **kw)
    engine.shutdown = shutdown_and_mark
    return asked


def own_log_handler() -> None:
    """Our log lines (adapter loaded / refused / removed) on their own handler: vLLM's engine start-up reconfigures
    logging (measured: with only the root handler, not one hylorada_serve line reached the log). Idempotent."""
    log.disabled, log.propagate = False, False
    log.setLevel(logging.INFO)
    if not any(getattr(h, "_hylorada", False) for h in log.handlers):
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(name)s: %(message)s"))
        h._hylorada = True
        log.addHandler(h)


def load_keys(config: ServeConfig):
    """--keys, read and checked before the engine starts (a bad file is exit 2 naming each line, in seconds, not
    after a 30 s engine start)."""
    if config.keys is None:
        return None
    from .keys import KeysFileError
    from .tenancy import KeysFile, forget_removed
    try:
        keys = KeysFile(config.keys, on_change=forget_removed)
    except KeysFileError as e:
        print(f"hylorada-serve: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    print(f"keys: {len(keys.table.tenants)} tenants, {len(keys.table.by_digest)} keys from {config.keys} "
          "(watched)", flush=True)
    return keys


def run(config: ServeConfig) -> int:
    """Serve `config` until a signal (exit 0) or the engine's death (exit 1)."""
    set_process_env(config)
    if config.demo:
        from .demo import demo_config
        config = demo_config(config)
    Path(config.adapters).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(asctime)s %(name)s: %(message)s")
    own_log_handler()
    keys = load_keys(config)
    args = vllm_args(config)
    try:
        return asyncio.run(serve(args, config, keys))
    except (KeyboardInterrupt, asyncio.CancelledError):     # signalled during start-up: engine already stopped
        return 0
