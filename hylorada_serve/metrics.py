"""Per-adapter Prometheus metrics, registered in prometheus_client's default registry, which vLLM's own
/metrics route exposes (single API-server process), so one scrape returns vLLM's metrics and these.

`adapter` is the public adapter name, or the served base name for base-model requests, or "-" when the request
named no servable model (404) or failed before resolving one. When the store forgets a removed name (store.py:
`_forget`, after `forget_seconds`), `forget(name)` drops every series labelled with it, so a server that sees
adapters come and go for weeks keeps a bounded set of series (and /metrics stays small).
"""
from __future__ import annotations

import json
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


_SERIES: dict[str, set] = defaultdict(set)     # adapter -> {(metric, other label values)} it has a series in


def _series(metric, name: str, *rest: str):
    _SERIES[name].add((metric, rest))
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


def forget(name: str) -> None:
    """Drop every series labelled `name` (the store forgot it; a name that comes back starts again at zero)."""
    for metric, rest in _SERIES.pop(name, ()):
        try:
            metric.remove(name, *rest)
        except KeyError:
            pass


class TokenCounter:
    """Counts generated tokens from a response body: JSON usage, or SSE chunks."""

    def __init__(self, stream: bool):
        self.stream, self.tokens, self._buf = stream, 0, bytearray()
        self._usage: int | None = None

    def feed(self, chunk: bytes) -> None:
        if len(self._buf) > (1 << 20):          # bounded: a huge body is not parsed
            return
        self._buf += chunk
        if not self.stream:
            return
        while b"\n\n" in self._buf:
            event, _, rest = bytes(self._buf).partition(b"\n\n")
            self._buf = bytearray(rest)
            self._sse(event)

    def _sse(self, event: bytes) -> None:
        if not event.startswith(b"data: {"):
            return
        try:
            obj = json.loads(event[6:])
        except ValueError:
            return
        if (obj.get("usage") or {}).get("completion_tokens") is not None:
            self._usage = obj["usage"]["completion_tokens"]
        for ch in obj.get("choices") or []:
            if ch.get("text") or (ch.get("delta") or {}).get("content"):
                self.tokens += 1

    def total(self) -> int:
        if not self.stream:
            try:
                return int(json.loads(bytes(self._buf)).get("usage", {}).get("completion_tokens") or 0)
            except (ValueError, AttributeError):
                return 0
        return self._usage if self._usage is not None else self.tokens


# Series that name adapter folders (refused ones too): withheld from /metrics without --metrics-key when one is set.
NAMED_SERIES = ("hylorada_adapter_", "vllm:lora_requests_info")


def redact(text: str) -> str:
    """A Prometheus/OpenMetrics exposition without NAMED_SERIES: their samples and their # HELP / # TYPE lines."""
    def named(line: str) -> bool:
        if line.startswith("# "):
            parts = line.split(" ", 3)
            line = parts[2] if len(parts) > 2 else ""
        return line.startswith(NAMED_SERIES)
    return "".join(line for line in text.splitlines(keepends=True) if not named(line))
