"""`ServeConfig`: every option of hylorada-serve, validated once at the door.

cli.py builds it from argv (each field is the option of the same name, `_` written `-`), launch.py reads it; nothing
else parses options. Construction checks every field and raises one ConfigError listing every bad value, so a user
fixes a command line in one go. vLLM-free: the engine's own options travel unparsed in `vllm_args`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

# Options of vLLM's that hylorada-serve sets itself; passing one through would fight the adapters folder or the keys.
MANAGED_VLLM_FLAGS = ("--lora-modules", "--api-key", "--enable-lora")
# vLLM options that size the KV cache; when vllm_args names none of them, the engine gets kv_cache_memory_bytes.
KV_SIZING_FLAGS = ("--kv-cache-memory-bytes", "--gpu-memory-utilization", "--device-memory-utilization")


class ConfigError(ValueError):
    """Every bad value of one ServeConfig, one line each (`problems`)."""

    def __init__(self, problems: list[str]):
        self.problems = tuple(problems)
        super().__init__("invalid hylorada-serve options:\n  " + "\n  ".join(self.problems))


def flag_given(args: tuple[str, ...] | list[str], *flags: str) -> bool:
    """True when `args` (vLLM's pass-through options) name one of `flags`, as `--flag v` or `--flag=v`, with `_` or
    `-` (vLLM's parser accepts both)."""
    return any(a.startswith("--") and a.split("=", 1)[0].replace("_", "-") in flags for a in args)


def flag_value(args: tuple[str, ...] | list[str], flag: str) -> str | None:
    """The value the last `--flag v` / `--flag=v` in `args` gives (spelt with `_` or `-`), or None."""
    found = None
    for i, a in enumerate(args):
        name, eq, v = a.partition("=")
        if a.startswith("--") and name.replace("_", "-") == flag:
            found = v if eq else (args[i + 1] if i + 1 < len(args) else None)
    return found


DEMO_BASES = ("smollm2-135m-instruct", "tiny")


@dataclass(frozen=True)
class ServeConfig:
    # what to serve
    base: str | None = None                 # base model: a local model folder (or a hub id where a hub is reachable)
    adapters: str | None = None             # DIR/: every sub-folder is one adapter, watched while serving
    demo: bool = False                      # serve the demo: a real small base and three trained adapters (fetched once)
    demo_base: str = "smollm2-135m-instruct"  # --demo's base: smollm2-135m-instruct (real, trained adapters) | tiny (toy)
    cache_dir: str | None = None            # --demo: where the demo base and adapters are built (default ~/.cache)
    served_model_name: str | None = None    # the base model's name in /v1/models (default: the base folder's name)
    # where to listen, and who may call
    host: str = "127.0.0.1"                 # bind address
    port: int = 8000                        # TCP port (0: any free port)
    api_key: str | None = field(default=None, repr=False)    # Bearer key for inference routes (None: open)
    admin_key: str | None = field(default=None, repr=False)  # Bearer key for /v1/adapters* (None: the API key)
    metrics_key: str | None = field(default=None, repr=False)  # Bearer key for /metrics' per-adapter series
    #                                         (None: /metrics is open in full, as routers such as llm-d scrape it)
    keys: str | None = None                 # --keys FILE: tenants, their key digests, adapter scopes, limits
    #                                         (hylorada_serve/keys.py; watched, reloaded on change)
    audit_log: str | None = None            # one JSON line per admin action and refused request (audit.py)
    audit_log_mb: float = 16.0              # the audit log rotates at this size, > 0
    audit_log_backups: int = 5              # rotated files kept (FILE.1 ... FILE.N), >= 1
    max_body_mb: float = 16.0               # 413 for request bodies over this many MiB, before reading them; 0 = off
    max_header_kb: int = 64                 # 431 and close when a request's headers exceed this many KiB
    header_timeout: float = 10.0            # 408 and close when a request's headers are not in after this many s
    # adapters
    max_loras: int = 4                      # adapters in one batch (vLLM's LoRA slots)
    max_cpu_loras: int | None = None        # adapters cached in CPU memory, >= max_loras (None: vLLM's default)
    max_cpu_lora_mb: float | None = None    # also a byte budget for that cache: least recently used adapters are
    #                                         evicted past it, never the --max-loras newest (None: the count only)
    max_lora_rank: int = 16                 # largest rank accepted (vLLM allows 1, 8, 16, 32, 64, ...)
    stable_seconds: float = 2.0             # a folder without a .ready marker loads once unchanged this long, > 0
    poll_interval: float = 0.5              # seconds between full scans of DIR/ without file events, and while a
    #                                         folder waits on time (the stable rule, a disk-space retry), > 0
    rescan_interval: float = 5.0            # with file events working and nothing waiting on time, the full scan
    #                                         (the safety net for changes that send no event, e.g. NFS) this often
    watch_events: bool = True               # also scan as soon as DIR/ reports a change (inotify via watchfiles);
    #                                         the polling pass stays the safety net (NFS); False: polling only
    startup_wait: float = 5.0               # at start-up, serving begins once DIR/'s folders are loaded or after this
    #                                         many seconds, whichever is first; the rest load in the background
    #                                         (0: serve as soon as the base is up)
    validation_wait: float = 60.0           # a request for a folder still being validated waits this long for its
    #                                         verdict, then gets 503 + Retry-After
    load_parallel: int = 4                  # folders copied and validated at once
    min_free_disk_mb: int = 1024            # no private copy of a folder is made that would leave less than this
    #                                         free on the disk of the private copies (the folder is refused instead)
    # past one machine (hylorada_serve/replicas/: Ray Serve; docs/scale.md)
    replicas: int = 0                       # N >= 1: N hylorada-serve replicas on Ray Serve behind one endpoint at
    #                                         --host/--port, requests routed to a replica that holds their adapter
    ray_address: str | None = None          # the Ray cluster to join (None: start a local one)
    models_per_replica: int = 8             # adapters each replica holds for affinity routing (Serve's multiplexing
    #                                         LRU; also each replica's --max-cpu-loras unless given)
    # engine defaults (vLLM options hylorada-serve sets unless vllm_args gives its own)
    kv_cache_memory_bytes: int = 1 << 30    # KV cache size unless vllm_args names one of KV_SIZING_FLAGS. Fixed, not
    #                                         a share: on the CPU backend a share of NUMA node 0, which can report half
    #                                         the RAM, can fall below the worker's own RSS and the engine refuses
    shutdown_timeout: int = 10              # seconds running requests get to finish on SIGINT/SIGTERM (vLLM's flag)
    vllm_args: tuple[str, ...] = ()         # vLLM's own engine/server options, passed through unchanged

    def __post_init__(self):
        bad: list[str] = []
        if not self.demo:
            bad += [f"--{f}: required (or --demo)" for f in ("base", "adapters") if not getattr(self, f)]
        if self.demo_base not in DEMO_BASES:
            bad.append(f"--demo-base: one of {', '.join(DEMO_BASES)} (got {self.demo_base!r})")
        if not isinstance(self.host, str) or not self.host:
            bad.append(f"--host: must be a non-empty address (got {self.host!r})")
        if not _int(self.port) or not 0 <= self.port <= 65535:
            bad.append(f"--port: must be an integer in 0..65535 (got {self.port!r})")
        if self.keys is not None and not Path(self.keys).is_file():
            bad.append(f"--keys: no such file {self.keys!r}")
        if not _number(self.audit_log_mb) or self.audit_log_mb <= 0:
            bad.append(f"--audit-log-mb: must be > 0 (got {self.audit_log_mb!r})")
        if not _int(self.audit_log_backups) or self.audit_log_backups < 1:
            bad.append(f"--audit-log-backups: must be an integer >= 1 (got {self.audit_log_backups!r})")
        if not _number(self.max_body_mb) or self.max_body_mb < 0:
            bad.append(f"--max-body-mb: must be >= 0 (got {self.max_body_mb!r})")
        if not _int(self.max_header_kb) or self.max_header_kb < 1:
            bad.append(f"--max-header-kb: must be an integer >= 1 (got {self.max_header_kb!r})")
        if not _number(self.header_timeout) or self.header_timeout <= 0:
            bad.append(f"--header-timeout: must be a positive number of seconds (got {self.header_timeout!r})")
        if not _int(self.max_loras) or self.max_loras < 1:
            bad.append(f"--max-loras: must be an integer >= 1 (got {self.max_loras!r})")
        if self.max_cpu_loras is not None and (not _int(self.max_cpu_loras) or not _int(self.max_loras)
                                               or self.max_cpu_loras < self.max_loras):
            bad.append(f"--max-cpu-loras: must be an integer >= --max-loras {self.max_loras!r} "
                       f"(got {self.max_cpu_loras!r})")
        if self.max_cpu_lora_mb is not None and (not _number(self.max_cpu_lora_mb) or self.max_cpu_lora_mb <= 0):
            bad.append(f"--max-cpu-lora-mb: must be a positive number of MiB (got {self.max_cpu_lora_mb!r})")
        if not _int(self.max_lora_rank) or self.max_lora_rank < 1:
            bad.append(f"--max-lora-rank: must be an integer >= 1 (got {self.max_lora_rank!r})")
        for name in ("stable_seconds", "poll_interval", "rescan_interval"):
            v = getattr(self, name)
            if not _number(v) or v <= 0:
                bad.append(f"--{name.replace('_', '-')}: must be a positive number of seconds (got {v!r})")
        for name in ("startup_wait", "validation_wait"):
            v = getattr(self, name)
            if not _number(v) or v < 0:
                bad.append(f"--{name.replace('_', '-')}: must be a number of seconds >= 0 (got {v!r})")
        if not _int(self.load_parallel) or not 1 <= self.load_parallel <= 64:
            bad.append(f"--load-parallel: must be an integer in 1..64 (got {self.load_parallel!r})")
        if not _int(self.min_free_disk_mb) or self.min_free_disk_mb < 0:
            bad.append(f"--min-free-disk-mb: must be an integer >= 0 (got {self.min_free_disk_mb!r})")
        if not isinstance(self.watch_events, bool):
            bad.append(f"watch_events: must be true or false (got {self.watch_events!r})")
        if not _int(self.replicas) or not 0 <= self.replicas <= 64:
            bad.append(f"--replicas: must be an integer in 0..64 (0: one server; got {self.replicas!r})")
        elif self.replicas and self.demo:
            bad.append("--replicas: not with --demo (run --demo once, then --replicas N with --base and --adapters "
                       "of the folders it printed)")
        if self.ray_address is not None and not self.replicas:
            bad.append("--ray-address: only with --replicas N")
        elif isinstance(self.ray_address, str) and self.ray_address.startswith("ray://"):
            bad.append("--ray-address: a ray:// client address cannot stream from Serve replicas (Ray Client has "
                       "no streaming calls); run hylorada-serve --replicas on a node of the cluster with "
                       "--ray-address auto or HEAD:6379")
        if not _int(self.models_per_replica) or self.models_per_replica < 1:
            bad.append(f"--models-per-replica: must be an integer >= 1 (got {self.models_per_replica!r})")
        if not _int(self.kv_cache_memory_bytes) or self.kv_cache_memory_bytes < 1:
            bad.append(f"kv_cache_memory_bytes: must be a positive integer (got {self.kv_cache_memory_bytes!r})")
        if not _int(self.shutdown_timeout) or self.shutdown_timeout < 0:
            bad.append(f"shutdown_timeout: must be an integer >= 0 (got {self.shutdown_timeout!r})")
        if not isinstance(self.vllm_args, tuple) or not all(isinstance(a, str) for a in self.vllm_args):
            bad.append(f"vllm_args: must be a tuple of strings (got {self.vllm_args!r})")
        else:
            bad += [f"{f}: managed by hylorada-serve; use --adapters DIR and --api-key/--admin-key"
                    for f in MANAGED_VLLM_FLAGS if flag_given(self.vllm_args, f)]
        if bad:
            raise ConfigError(bad)

    @property
    def served_name(self) -> str:
        """The base model's public name: --served-model-name, else the base folder's name."""
        return self.served_model_name or Path(self.base).name or str(self.base)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * (1 << 20))


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return (_int(v) or isinstance(v, float)) and math.isfinite(v)
