"""vLLM's `vllm:lora_requests_info` gauge: keep only the latest series, labelled with the names clients send.

vLLM 0.32 (vllm/v1/metrics/loggers.py, `PrometheusStatLogger.record`) sets, every step,

    vllm:lora_requests_info{max_lora, running_lora_adapters="a,b", waiting_lora_adapters="c"} = now

where the two labels are comma-joined names of the adapters with requests in flight. Every distinct
(running, waiting) pair becomes a new child gauge that is never removed: the API server's memory and the
`/metrics` text grow with every combination of adapters ever in flight, and `hylorada-serve` publishes each
adapter version under its own name (`name@vN`), so churn makes the pairs unbounded (the 30-min soak grew
1,180 children). The value is a timestamp and readers (routers) take the newest series, so only the newest
carries information: this wrapper removes the previous label set whenever a new one is set.

Routers read these labels as adapter names (llm-d's endpoint picker: the series with the largest value, label values
split on commas, matched against the request's `model`), so they must be the names clients send: the wrapper
writes `name` for each `name@vN` (hylorada-serve's per-version engine name, models.py), once per name, in vLLM's
order. An adapter with one version running and a newer one waiting is listed in both, as it is in both.

The API server process loads general plugins too (vllm/engine/arg_utils.py), so this is installed there.
"""
from __future__ import annotations

import re

from .wrap import wrap

ADAPTER_LABELS = ("running_lora_adapters", "waiting_lora_adapters")
_VERSION = re.compile(r"@v\d+\Z")          # hylorada-serve's `name@vN` (hylorada_serve/models.py)


def public_names(value: str) -> str:
    """'a@v1,b@v3,a@v2' -> 'a,b': the client-facing names, each once, in order."""
    seen: dict[str, None] = {}
    for n in str(value).split(","):
        if n:
            seen.setdefault(_VERSION.sub("", n), None)
    return ",".join(seen)


class LatestOnlyGauge:
    """Wraps a labelled prometheus Gauge: `.labels(**kw)` writes the adapter labels as public names and first
    removes the label set used before, if different.

    Series alive at any time: at most one. Everything else is passed through to the wrapped gauge.
    """

    def __init__(self, gauge):
        self._gauge = gauge
        self._names = tuple(gauge._labelnames)
        self._last: tuple[str, ...] | None = None

    def labels(self, *values, **kw):
        key = tuple(str(v) for v in values) if values else tuple(str(kw[n]) for n in self._names)
        key = tuple(public_names(v) if n in ADAPTER_LABELS else v for n, v in zip(self._names, key))
        if self._last is not None and self._last != key:
            try:
                self._gauge.remove(*self._last)
            except KeyError:                 # removed by someone else: nothing to drop
                pass
        self._last = key
        return self._gauge.labels(*key)

    def __getattr__(self, name):
        return getattr(self._gauge, name)


def stat_logger_init(orig, self, *args, **kwargs) -> None:
    orig(self, *args, **kwargs)
    if getattr(self, "gauge_lora_info", None) is not None:
        self.gauge_lora_info = LatestOnlyGauge(self.gauge_lora_info)


def install() -> None:
    from vllm.v1.metrics.loggers import PrometheusStatLogger
    wrap(PrometheusStatLogger, "__init__")(stat_logger_init)
