"""`hylorada-serve`: an OpenAI-compatible server for one base model and every adapter in a folder.

    hylorada-serve --base MODEL_DIR --adapters DIR/ [--port 8000] [--api-key KEY] [--admin-key KEY] ...
    hylorada-serve --demo            # builds (once, cached) a tiny Llama and demo adapters, then serves them

Life of a request: OpenAI client → AuthMiddleware → AdmissionMiddleware (pins the adapter versions current now)
→ vLLM's /v1/completions or /v1/chat/completions handler → AsyncLLM with LoRARequest(name@vN) → response with
x-hylorada-adapter-version. Adapters are folders in DIR/ (name = folder name), watched while serving.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("hylorada_serve")

EPILOG = """adapters folder:
  Each sub-folder of DIR/ is one adapter, requested with "model": "<folder name>". Served-form adapters
  (hylorada export / hylorada convert-peft) and plain PEFT LoRA folders (safetensors only) are accepted.
  A folder is loaded once complete: when a `.ready` file in it is newer than every other file, or when
  nothing in it changed for --stable-seconds. A changed folder becomes a new version (running requests
  finish on the old one); a removed folder stops being served. Bad adapters are refused with a reason
  (see GET /v1/adapters) and never stop the server.

any other option is passed to vLLM's engine and server unchanged, e.g. --dtype float32 --max-model-len 2048
  --max-num-seqs 16 --enforce-eager --shutdown-timeout 10 (list: python -m vllm.entrypoints.openai.api_server --help).
  Set here: --enable-lora; --gpu-memory-utilization 0.3 unless given (on CPU it sizes the KV cache in RAM).

endpoints: /v1/models, /v1/completions, /v1/chat/completions (stream too), /health, /metrics,
  GET /v1/adapters, POST /v1/adapters/{name}/load | reload | unload (admin)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hylorada-serve", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--base", help="base model: a local model folder (or a hub id where a hub can be reached)")
    p.add_argument("--adapters", help="the adapters folder DIR/ to serve and watch")
    p.add_argument("--demo", action="store_true", help="build (once) and serve a tiny base with demo adapters")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-loras", type=int, default=4, help="adapters in one batch (vLLM slots; default 4)")
    p.add_argument("--max-cpu-loras", type=int, default=None, help="adapters cached in CPU memory (>= max-loras)")
    p.add_argument("--max-lora-rank", type=int, default=16, help="largest rank accepted (1, 8, 16, 32, 64, ...)")
    p.add_argument("--api-key", default=os.environ.get("HYLORADA_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on inference routes (env HYLORADA_API_KEY)")
    p.add_argument("--admin-key", default=os.environ.get("HYLORADA_ADMIN_KEY"),
                   help="require this key (not the API key) on /v1/adapters* (env HYLORADA_ADMIN_KEY)")
    p.add_argument("--served-model-name", default=None, help="name of the base model in /v1/models "
                   "(default: the base folder's name)")
    p.add_argument("--stable-seconds", type=float, default=2.0,
                   help="a folder without a .ready marker is loaded once unchanged this long (default 2)")
    p.add_argument("--poll-interval", type=float, default=0.5, help="seconds between scans of DIR/ (default 0.5)")
    p.add_argument("--cache-dir", default=None, help="--demo: where the demo base/adapters are built")
    p.add_argument("--max-body-mb", type=float, default=16.0,
                   help="answer 413 to request bodies larger than this many MiB, before reading them (default 16; "
                        "0 = no limit)")
    return p


def vllm_args(opts, rest: list[str], served_name: str):
    """vLLM's own server/engine Namespace, from our options plus the pass-through ones."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    if any(a.split("=")[0] in ("--lora-modules", "--api-key", "--enable-lora") for a in rest):
        raise SystemExit("hylorada-serve: --lora-modules/--api-key/--enable-lora are managed here; "
                         "use --adapters DIR and --api-key/--admin-key")
    argv = ["--model", str(opts.base), "--served-model-name", served_name, "--host", opts.host,
            "--port", str(opts.port), "--enable-lora", "--max-loras", str(opts.max_loras),
            "--max-lora-rank", str(opts.max_lora_rank)]
    if opts.max_cpu_loras:
        argv += ["--max-cpu-loras", str(opts.max_cpu_loras)]
    if not any(a.startswith("--gpu-memory-utilization") for a in rest):
        argv += ["--gpu-memory-utilization", "0.3"]
    if not any(a.startswith("--shutdown-timeout") for a in rest):
        argv += ["--shutdown-timeout", "10"]
    if not any(a.startswith("--hf-overrides") for a in rest):
        argv += rope_overrides(opts)
    args = make_arg_parser(FlexibleArgumentParser(prog="hylorada-serve")).parse_args(argv + rest)
    validate_parsed_serve_args(args)
    return args


def rope_overrides(opts) -> list[str]:
    """--hf-overrides giving the engine the RoPE scaling most start-up adapters were trained with (if any)."""
    import json

    from .publish import engine_rope

    meta, n = engine_rope(Path(opts.adapters))
    if meta is None:
        return []
    from transformers import AutoConfig

    from hylorada.method.rope import hf_overrides
    print(f"engine RoPE scaling: {meta} (asked for by {n} adapter(s); adapters that differ are refused)", flush=True)
    return ["--hf-overrides", json.dumps(hf_overrides(meta, AutoConfig.from_pretrained(opts.base)))]


async def serve(args, opts) -> int:
    """Engine up → app (vLLM's) + our store/watcher/admin → serve until SIGINT/SIGTERM or engine death."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client_from_engine_args
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.launcher import serve_http, setup_server
    from vllm.lora.request import LoRARequest

    from . import gc_heap, metrics
    from .app import install
    from .store import AdapterStore
    from .watcher import HotSwapper

    loop, me = asyncio.get_running_loop(), asyncio.current_task()
    for sig in (signal.SIGINT, signal.SIGTERM):   # during start-up: cancel (the engine context shuts it down);
        loop.add_signal_handler(sig, me.cancel)   # vLLM's serve_http installs its own drain handlers later
    store = AdapterStore(opts.adapters, stable_seconds=opts.stable_seconds)
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
                                 on_event=on_event)
            install(app, swapper, opts.api_key, opts.admin_key, max_body_bytes=int(opts.max_body_mb * (1 << 20)))
            own_log_handler()                      # again, after the engine's start-up configured logging
            await initial_load(swapper, opts)
            stop = asyncio.Event()
            watcher = asyncio.create_task(swapper.run(stop, opts.poll_interval))
            gc_once = asyncio.create_task(gc_heap.collect_after_freeze(stop))   # vLLM freezes the heap at start
            print(banner(listen_address, args.served_model_name[0], store, opts), flush=True)
            shutdown = await serve_http(app, sock=sock, host=args.host, port=args.port, log_level="warning",
                                        access_log=False, timeout_keep_alive=5)
            died = engine.errored and not asked
            stop.set()
            watcher.cancel()                       # the engine is already stopped: do not wait on a pass
            await asyncio.gather(watcher, gc_once, return_exceptions=True)
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


async def initial_load(swapper, opts) -> None:
    """Load what DIR/ holds before accepting traffic, and print what was found (bounded wait)."""
    deadline = asyncio.get_running_loop().time() + opts.stable_seconds + 4 * opts.poll_interval + 1
    while True:
        await swapper.step()
        waiting = [e.name for e in swapper.store.entries.values() if e.status == "waiting"]
        if not waiting or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(opts.poll_interval)
    rows = swapper.store.status()
    print(f"adapters in {swapper.store.root}: {sum(r['status'] == 'ready' for r in rows)} serving, "
          f"{sum(r['status'] == 'refused' for r in rows)} refused", flush=True)
    for r in rows:
        if r["status"] == "ready":
            print(f"  ok       {r['name']:<24} kind={r['kind']:<9} rank={r['rank']:<4} "
                  f"size={r['size_bytes'] / 1024:.1f} KiB", flush=True)
        else:
            print(f"  {r['status']:<8} {r['name']:<24} {r['reason']}", flush=True)


def banner(url: str, base_name: str, store, opts) -> str:
    names = sorted(store.serving())
    model = names[0] if names else base_name
    key = ' -H "Authorization: Bearer $HYLORADA_API_KEY"' if opts.api_key else ""
    return f"""
hylorada-serve ready on {url}   (base model: "{base_name}"; adapters: {", ".join(names) or "none"})

  curl {url}/v1/completions -H 'Content-Type: application/json'{key} \\
       -d '{{"model": "{model}", "prompt": "the cat", "max_tokens": 16, "temperature": 0}}'

  python -c 'from openai import OpenAI; c = OpenAI(base_url="{url}/v1", api_key="{'KEY' if opts.api_key else 'none'}"); \\
print(c.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "hello"}}], max_tokens=16).choices[0].message.content)'

  adapters: curl {url}/v1/adapters   (drop a new folder into {store.root} to add one)
"""


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


ONEDNN_CACHE = "128"


def engine_env(env) -> dict:
    """Environment the engine processes need, set before vLLM spawns them (they inherit it; an operator's own
    value wins). ONEDNN_PRIMITIVE_CACHE_CAPACITY: vLLM's CPU linear layers run oneDNN matmuls, and oneDNN keeps
    every compiled primitive, one per (weight shape, tokens in the step), in a process-wide cache of 1,024 by
    default, besides the 32 token counts each layer's own handler caches. Measured (docs/reliability.md, Soak):
    offline, 5 GEMM shapes x 400 token counts grew RSS by 490 MiB with 1,024 and 91 MiB with 128; in the 30-min
    soak the vLLM worker grew 3.3 MiB per 1000 requests with the default (stock vLLM: 6.8) and 0.8 with 128."""
    return {k: v for k, v in {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": ONEDNN_CACHE}.items() if k not in env}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    os.environ["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "0"     # vLLM's path-taking load route stays off
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    os.environ.setdefault("VLLM_MAX_N_SEQUENCES", "64")             # n / best_of above this are 400s (vLLM: 16384)
    os.environ.update(engine_env(os.environ))
    opts, rest = build_parser().parse_known_args(argv)
    if opts.demo:
        from .demo import prepare
        opts.base, opts.adapters = prepare(opts.cache_dir)
        rest = ["--dtype", "float32", "--max-model-len", "2048", "--kv-cache-memory-bytes", str(1 << 30), *rest]
    if not opts.base or not opts.adapters:
        build_parser().error("--base and --adapters are required (or --demo)")
    if not opts.max_body_mb >= 0:
        build_parser().error(f"--max-body-mb must be >= 0 (got {opts.max_body_mb})")
    Path(opts.adapters).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(asctime)s %(name)s: %(message)s")
    own_log_handler()
    served = opts.served_model_name or Path(opts.base).name or str(opts.base)
    args = vllm_args(opts, rest, served)
    try:
        return asyncio.run(serve(args, opts))
    except (KeyboardInterrupt, asyncio.CancelledError):     # signalled during start-up: engine already stopped
        return 0


if __name__ == "__main__":
    sys.exit(main())
