"""`hylorada-serve --replicas N`: Ray up (a local cluster, or --ray-address), the registry actor, N Replica
deployments (Serve without its HTTP proxy), then the front (front.py: the Ingress at --host/--port) until
SIGINT/SIGTERM, and it all taken down.

    run(config, argv) -> exit code. Each replica gets argv less the replica options (argv.replica_argv) and the keys
    of this process's environment (HYLORADA_*_KEY) through its own environment, never on a command line.
"""
from __future__ import annotations

import os
import signal
import sys
import time

from ..config import ServeConfig
from .argv import replica_argv, without_key_flags

NAMESPACE = "hylorada"
REGISTRY = "hylorada-registry-{port}"      # one app and one registry per endpoint: two can share a cluster
APP = "hylorada-{port}"
HEALTH_PERIOD_S = 2.0
HEALTH_TIMEOUT_S = 10.0
START_TIMEOUT_S = 900.0
OBJECT_STORE_BYTES = 256 << 20   # a local cluster: requests and answers only pass through it (Ray: 30 % of RAM)


def _need_ray():
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        sys.exit("hylorada-serve: --replicas needs Ray Serve: pip install 'hylorada[ray]' (ray[serve]==2.60.0)")


def _interrupt(*_):
    raise KeyboardInterrupt


def build_replicas(config: ServeConfig, argv: list[str], env: dict, log_dir: str):
    from ray import serve

    from .replica import deployment_class
    replica = serve.deployment(
        deployment_class(config.models_per_replica), name="Replica", num_replicas=config.replicas,
        ray_actor_options={"num_cpus": 0}, max_ongoing_requests=max(64, 4 * config.max_loras),
        health_check_period_s=HEALTH_PERIOD_S, health_check_timeout_s=HEALTH_TIMEOUT_S,
        graceful_shutdown_timeout_s=config.shutdown_timeout + 20)
    rargv = replica_argv(argv, max(config.models_per_replica, config.max_loras))
    return replica.bind(rargv, env, REGISTRY.format(port=config.port), NAMESPACE, START_TIMEOUT_S, log_dir)


def run(config: ServeConfig, argv: list[str]) -> int:
    _need_ray()
    import ray
    from ray import serve

    from .front import serve_front
    from .ingress import Ingress
    from .registry import Registry
    env = {k: v for k, v in (("HYLORADA_API_KEY", config.api_key), ("HYLORADA_ADMIN_KEY", config.admin_key),
                             ("HYLORADA_METRICS_KEY", config.metrics_key)) if v}
    argv = without_key_flags(argv)
    log_dir = os.environ.get("HYLORADA_REPLICA_LOG_DIR", "")
    t0 = time.monotonic()
    local = config.ray_address is None
    own = {"object_store_memory": OBJECT_STORE_BYTES, "_node_ip_address": "127.0.0.1"} if local else {}
    ray.init(address=config.ray_address or "local", namespace=NAMESPACE, include_dashboard=False,
             log_to_driver=False, logging_level="WARNING", **own)
    app = APP.format(port=config.port)
    registry = ray.remote(Registry).options(name=REGISTRY.format(port=config.port), namespace=NAMESPACE,
                                            num_cpus=0, max_restarts=-1, max_concurrency=1000).remote()
    ray.get(registry.live.remote())
    serve.start(proxy_location="Disabled")
    print(f"hylorada-serve: starting {config.replicas} replica(s) on Ray "
          f"({config.ray_address or 'a local cluster'}); each replica's log: "
          f"{log_dir or '$TMPDIR/hylorada-replicas'}/replica-<tag>.log", flush=True)
    code = 0
    for sig in (signal.SIGINT, signal.SIGTERM):       # until the front's own handlers take over, and after
        signal.signal(sig, _interrupt)
    try:
        handle = serve.run(build_replicas(config, argv, env, log_dir), name=app, route_prefix=None, blocking=False)
        ingress = Ingress(handle, registry, config.served_name, config.max_body_bytes)
        print(f"hylorada-serve: {config.replicas} replica(s) ready in {time.monotonic() - t0:.0f} s at "
              f"http://{config.host}:{config.port} (GET /v1/replicas lists them)", flush=True)
        serve_front(ingress, config)
    except KeyboardInterrupt:
        pass
    except Exception as e:                                   # noqa: BLE001 — reported, then taken down
        print(f"hylorada-serve: replicas failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        code = 1
    finally:
        try:
            serve.delete(app)                       # ours only: a shared cluster's other apps stay
            if local:
                serve.shutdown()
        finally:
            ray.kill(registry)
            ray.shutdown()
    return code

