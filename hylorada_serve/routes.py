"""Every route vLLM's app exposes (as hylorada-serve builds it: launch.py) and what each gets here.

    OPEN   no key (health probes, /metrics — whose per-adapter series need --metrics-key when one is set)
    API    the API key; the route never reaches the engine with an adapter
    ADMIT  the API key, then AdmissionMiddleware: pinned to the adapter versions serving at admission
           (models.admitted), x-hylorada-adapter headers, per-adapter metrics. Every route that resolves a `model`
           to an adapter (vLLM's `_maybe_get_adapters`) is ADMIT: a version freed under an unpinned request
           makes the worker fail (`adapter folder does not exist`) and the engine die.
    ADMIN  the admin key (/v1/adapters*, /health/details: ours)
    OFF    the API key, then 404 naming the route as not served here

A path that is not in ROUTES is OFF: a route a vLLM upgrade adds (or one an option such as VLLM_SERVER_DEV_MODE,
--enable-scale-out or a pooling base would add) is refused until it is classified here.
tests/serve/test_routes.py builds vLLM's app as launch.py does and fails on any route missing from this table.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

OPEN, API, ADMIT, ADMIN, OFF = "open", "api", "admit", "admin", "off"


@dataclass(frozen=True)
class Route:
    methods: tuple[str, ...]
    policy: str
    why: str


_G, _P, _GH = ("GET",), ("POST",), ("GET", "HEAD")
ROUTES: dict[str, Route] = {
    # vLLM's probes and info
    "/health": Route(_G, OPEN, "liveness; 503 once the engine is dead"),
    "/ping": Route(("GET", "POST"), OPEN, "SageMaker's /health"),
    "/version": Route(_G, OPEN, "vLLM's version"),
    "/metrics": Route(_G, OPEN, "Prometheus; per-adapter series need --metrics-key when one is set"),
    "/metrics/*": Route((), OPEN, "prometheus_client's mounted app (same filter)"),
    "/load": Route(_G, API, "server load (running requests)"),
    "/kv_event_sources": Route(_G, API, "KV-event publisher endpoints"),
    "/openapi.json": Route(_GH, API, "the API schema"),
    "/docs": Route(_GH, API, "Swagger UI"),
    "/docs/oauth2-redirect": Route(_GH, API, "Swagger UI"),
    "/redoc": Route(_GH, API, "ReDoc"),
    "/v1/models": Route(_G, API, "base + servable adapters, from the store"),
    # everything that resolves `model` to an adapter
    "/v1/completions": Route(_P, ADMIT, "OpenAI completions"),
    "/v1/chat/completions": Route(_P, ADMIT, "OpenAI chat"),
    "/v1/chat/completions/batch": Route(_P, ADMIT, "several chats in one request"),
    "/v1/responses": Route(_P, ADMIT, "OpenAI responses (store/background off: launch.py)"),
    "/v1/messages": Route(_P, ADMIT, "Anthropic messages"),
    "/v1/messages/count_tokens": Route(_P, ADMIT, "Anthropic token count (tokenizer of the adapter's model)"),
    "/invocations": Route(_P, ADMIT, "SageMaker; X-Amzn-SageMaker-Adapter-Identifier becomes `model`"),
    "/generative_scoring": Route(_P, ADMIT, "scores from generation"),
    "/v1/systemone": Route(_P, ADMIT, "structured decisions"),
    "/tokenize": Route(_P, ADMIT, "tokenizer"),
    "/detokenize": Route(_P, ADMIT, "tokenizer"),
    # stored responses: the store is off (launch.py), so these only ever answer 404
    "/v1/responses/{response_id}": Route(_G, API, "stored response (store off: 404)"),
    "/v1/responses/{response_id}/cancel": Route(_P, API, "cancel a background response (none exist)"),
    # switched off
    "/scale_elastic_ep": Route(_P, OFF, "elastic expert parallelism: one engine here, and it would restart it"),
    "/is_scaling_elastic_ep": Route(_P, OFF, "elastic expert parallelism"),
    "/v1/chat/completions/render": Route(_P, OFF, "scale-out (disaggregated) serving is not supported"),
    "/v1/completions/render": Route(_P, OFF, "scale-out"),
    "/v1/messages/render": Route(_P, OFF, "scale-out"),
    "/v1/responses/render": Route(_P, OFF, "scale-out"),
    "/v1/chat/completions/derender": Route(_P, OFF, "scale-out"),
    "/v1/completions/derender": Route(_P, OFF, "scale-out"),
    "/inference/v1/generate": Route(_P, OFF, "scale-out token-in generate: reaches the engine unpinned"),
    "/inference/v1/abort_requests": Route(_P, OFF, "scale-out: aborts any request by id"),
    # ours (app.admin_router)
    "/v1/adapters": Route(_G, ADMIN, "every folder's status"),
    "/v1/adapters/{name}/load": Route(_P, ADMIN, "load DIR/name now"),
    "/v1/adapters/{name}/reload": Route(_P, ADMIN, "load DIR/name as a new version"),
    "/v1/adapters/{name}/unload": Route(_P, ADMIN, "stop serving it"),
    "/v1/load_lora_adapter": Route(_P, ADMIN, "vLLM's body; lora_path must be DIR/<lora_name> (ours)"),
    "/v1/unload_lora_adapter": Route(_P, ADMIN, "vLLM's body; stop serving lora_name (ours)"),
    "/health/details": Route(_G, ADMIN, "engine, adapters and keys file state (a bad reload's reason)"),
}

_TEMPLATES = [(re.compile("^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(p)) + "$"), r)
              for p, r in ROUTES.items() if "{" in p]


def route(path: str) -> Route | None:
    """The table entry serving `path` (as Starlette routes it: scope["path"]), or None (not classified: OFF)."""
    if (r := ROUTES.get(path)) is not None:
        return r
    if path.startswith("/metrics/"):
        return ROUTES["/metrics/*"]
    return next((r for rx, r in _TEMPLATES if rx.match(path)), None)


def policy(path: str) -> str:
    r = route(path)
    return OFF if r is None else r.policy
