"""Per-adapter Prometheus metrics, registered in prometheus_client's default registry, which vLLM's own
/metrics route exposes (single API-server process), so one scrape returns vLLM's metrics and these.

`adapter` is the public adapter name, or the served base name for base-model requests, or "-" when the request
named no servable model (404) or failed before resolving one. When the store forgets a removed name (store.py:
`_forget`, after `forget_seconds`), `forget(name)` drops every series labelled with it, so a server that sees
adapters come and go for weeks keeps a bounded set of series (and /metrics stays small).
"""
from __future__ import annotations

import json
import re
from collections import defaultdict

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("hylorada_adapter_requests", "Inference requests finished, by adapter and HTTP status",
                   ["adapter", "code"])
TOKENS = Counter("hylorada_adapter_generated_tokens",
                 "Generated tokens by adapter (usage.completion_tokens; for streams without usage, one per chunk)",
                 ["adapter"])
LATENCY = Histogram("hylorada_adapter_request_seconds", "Request latency from admission to the last byte",
                    ["adapter"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
LOAD_EVENTS = Counter("hylorada_adapter_load_events", "Adapter lifecycle events (loaded, refused, removed, unloaded)",
                      ["adapter", "event"])
VERSION = Gauge("hylorada_adapter_version", "Version number now serving (0: not serving)", ["adapter"])
SERVING = Gauge("hylorada_adapters_serving", "Adapters now servable")
# where the serving adapters live (residency.py, from the engine every 5 s)
ENGINE_LOADS = Counter("hylorada_adapter_engine_loads", "Reads of an adapter from disk by the engine worker (each after "
                       "the first is a CPU-cache miss after an eviction)", ["adapter"])
RESIDENT = Gauge("hylorada_adapters_resident", "Serving adapters by where they live: slot (in a LoRA slot), host (the "
                 "engine's CPU cache), disk (only the validated copy; the next request loads it)", ["where"])
CACHE_BYTES = Gauge("hylorada_adapters_cache_bytes", "Bytes of adapter tensors in the engine's CPU cache")
# per tenant (--keys): the tenant's name from the keys file, never a key
TENANT_REQUESTS = Counter("hylorada_tenant_requests", "Requests of a tenant's keys, by HTTP status (429: a limit, "
                          "404: an unknown adapter or one the tenant may not use)", ["tenant", "code"])
TENANT_TOKENS = Counter("hylorada_tenant_generated_tokens", "Generated tokens by tenant", ["tenant"])
TENANT_LIMITED = Counter("hylorada_tenant_limited", "Requests refused (429) or streams cut, by tenant and limit",
                         ["tenant", "limit"])


_SERIES: dict[str, set] = defaultdict(set)     # adapter -> {(metric, other label values)} it has a series in
_TENANT_SERIES: dict[str, set] = defaultdict(set)


def _series(metric, name: str, *rest: str, book=_SERIES):
    book[name].add((metric, rest))
    return metric.labels(name, *rest)


def on_event(name: str, event: str, version: int | None, serving: int) -> None:
    _series(LOAD_EVENTS, name, event).inc()
    _series(VERSION, name).set(version or 0)
    SERVING.set(serving)


def request_done(adapter: str, code: int, seconds: float, tokens: int | None) -> None:
    """One finished inference request: its status, latency and (when counted) generated tokens."""
    _series(REQUESTS, adapter, str(code)).inc()
    _series(LATENCY, adapter).observe(seconds)
    if tokens is not None:
        _series(TOKENS, adapter).inc(tokens)


def engine_loads(adapter: str, n: int) -> None:
    """`n` more reads of `adapter` from disk by the engine (residency.py)."""
    _series(ENGINE_LOADS, adapter).inc(n)


def tenant_done(tenant: str, code: int, tokens: int) -> None:
    _series(TENANT_REQUESTS, tenant, str(code), book=_TENANT_SERIES).inc()
    if tokens:
        _series(TENANT_TOKENS, tenant, book=_TENANT_SERIES).inc(tokens)


def tenant_limited(tenant: str, limit: str) -> None:
    _series(TENANT_LIMITED, tenant, limit, book=_TENANT_SERIES).inc()


def forget(name: str, book=_SERIES) -> None:
    """Drop every series labelled `name` (the store forgot it; a name that comes back starts again at zero)."""
    for metric, rest in book.pop(name, ()):
        try:
            metric.remove(name, *rest)
        except KeyError:
            pass


def forget_tenant(name: str) -> None:
    """A tenant removed from the keys file leaves /metrics (bounded series)."""
    forget(name, book=_TENANT_SERIES)


class TokenCounter:
    """Counts generated tokens from a response body: JSON usage, or SSE chunks (and their usage when reported).

    A JSON body is parsed whole up to BUFFER bytes; past that only its last TAIL bytes are kept and the usage is read
    from them (vLLM writes `usage` after `choices`, so a 20-top-logprobs answer cannot hide its tokens by size)."""
    BUFFER, TAIL = 1 << 20, 64 << 10

    def __init__(self, stream: bool):
        self.stream, self.tokens, self._buf, self._over = stream, 0, bytearray(), False
        self._usage: int | None = None

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        if not self.stream:
            if len(self._buf) > self.BUFFER:
                self._over, self._buf = True, self._buf[-self.TAIL:]
            return
        if len(self._buf) > self.BUFFER:        # an SSE "event" this large is not vLLM's: drop it, keep counting
            self._buf = bytearray()
            return
        while b"\n\n" in self._buf:
            event, _, rest = bytes(self._buf).partition(b"\n\n")
            self._buf = bytearray(rest)
            self._sse(event)

    def so_far(self) -> int:
        """Tokens seen so far in a stream: the usage when one was reported, else the chunks with output."""
        return max(self.tokens, self._usage or 0)

    def _sse(self, event: bytes) -> None:
        """One SSE event: OpenAI chunks (choices[].text / delta.content, usage.completion_tokens), Anthropic
        messages (content_block_delta, message_delta.usage.output_tokens) and OpenAI responses
        (response.output_text.delta, response.completed's usage.output_tokens)."""
        data = next((ln[6:] for ln in event.split(b"\n") if ln.startswith(b"data: {")), None)
        if data is None:
            return
        try:
            obj = json.loads(data)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        kind = obj.get("type")
        usage = (obj.get("response") or {}).get("usage") if kind == "response.completed" else obj.get("usage")
        if isinstance(usage, dict):
            n = usage.get("completion_tokens", usage.get("output_tokens"))
            if isinstance(n, int):
                self._usage = n
        if kind in ("content_block_delta", "response.output_text.delta"):
            self.tokens += 1
        for ch in obj.get("choices") or []:
            if not isinstance(ch, dict):
                continue
            delta = ch.get("delta") if isinstance(ch.get("delta"), dict) else {}
            if ch.get("text") or any(delta.get(k) for k in ("content", "reasoning_content", "reasoning", "tool_calls")):
                self.tokens += 1

    def total(self) -> int:
        if not self.stream:
            if self._over:
                found = re.findall(rb'"(?:completion_tokens|output_tokens)"\s*:\s*(\d+)', bytes(self._buf))
                return int(found[-1]) if found else 0
            try:
                usage = json.loads(bytes(self._buf)).get("usage") or {}
                return int(usage.get("completion_tokens", usage.get("output_tokens")) or 0)
            except (ValueError, AttributeError, TypeError):
                return 0
        return self._usage if self._usage is not None else self.tokens


# Series that name adapter folders (refused ones too) or tenants: withheld from /metrics without --metrics-key
# when one is set.
NAMED_SERIES = ("hylorada_adapter_", "hylorada_tenant_", "vllm:lora_requests_info")


def redact(text: str) -> str:
    """A Prometheus/OpenMetrics exposition without NAMED_SERIES: their samples and their # HELP / # TYPE lines."""
    def named(line: str) -> bool:
        if line.startswith("# "):
            parts = line.split(" ", 3)
            line = parts[2] if len(parts) > 2 else ""
        return line.startswith(NAMED_SERIES)
    return "".join(line for line in text.splitlines(keepends=True) if not named(line))
