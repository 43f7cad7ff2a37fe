"""The one endpoint of `--replicas`: a uvicorn server in the driver process at --host/--port, running the Ingress
(ingress.py) behind the single server's header bounds (http_bounds.py: 431 / 408), the replicas reached through a
Serve deployment handle.

    asgi_app(ingress) -> an ASGI app: each HTTP request -> ingress(Request) -> its Response
    serve_front(ingress, config) -> runs until SIGINT/SIGTERM (uvicorn's handlers), running requests given
        --shutdown-timeout seconds

Why not Serve's own HTTP proxy with the Ingress as a deployment: every streamed chunk would cross two Ray hops
(replica -> ingress -> proxy) instead of one (replica -> here). bench.method.ray_hop measured both on this machine
(bench/README.md). The cost: one front process, on the machine that runs `hylorada-serve --replicas`.
"""
from __future__ import annotations

import uvicorn
from starlette.requests import Request

from ..config import ServeConfig
from ..http_bounds import bounded_protocol


def asgi_app(ingress):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        response = await ingress(Request(scope, receive))
        await response(scope, receive, send)
    return app


def serve_front(ingress, config: ServeConfig) -> None:
    uvicorn.Server(uvicorn.Config(
        asgi_app(ingress), host=config.host, port=config.port, log_level="warning",
        http=bounded_protocol(config.max_header_kb << 10, config.header_timeout),
        timeout_graceful_shutdown=config.shutdown_timeout)).run()
