"""Per-tenant limits, counted before a request reaches the engine: requests per second, generated tokens per minute
and requests running at once. vLLM-free and clock-injected (tests drive `now`).

    requests_per_second r   token bucket of capacity max(1, r), refilled at r per second; a request takes 1
    tokens_per_minute   T   a request is admitted while the tokens generated in the last 60 s are below T; tokens
                            are counted as they stream (`spend`), so a stream that takes the total over T is cut
    concurrent          C   at most C admitted requests not yet finished

A refusal carries which limit and `retry_after` (whole seconds, >= 1: when a retry can succeed — the bucket holds a
token again, enough tokens leave the 60 s window; 1 for concurrency, as it frees when a running request ends).
State is per tenant name, so a reloaded keys file keeps the counts of tenants it keeps (with their new limits).
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .keys import Tenant

WINDOW_S = 60.0


@dataclass(frozen=True)
class Refusal:
    limit: str                  # "requests_per_second" | "tokens_per_minute" | "concurrent"
    retry_after: int            # seconds
    message: str


@dataclass
class _State:
    bucket: float = -1.0        # tokens in the request bucket (-1: not yet filled)
    filled_at: float = 0.0
    running: int = 0
    spent: deque = field(default_factory=deque)     # (time, tokens) in the last WINDOW_S
    spent_total: int = 0


class Limiter:
    def __init__(self, clock=time.monotonic):
        self.clock, self._state, self._lock = clock, {}, threading.Lock()

    def _s(self, tenant: Tenant) -> _State:
        return self._state.setdefault(tenant.name, _State())

    def _trim(self, s: _State, now: float) -> None:
        while s.spent and s.spent[0][0] <= now - WINDOW_S:
            s.spent_total -= s.spent.popleft()[1]

    def rate(self, tenant: Tenant) -> Refusal | None:
        """One request against requests_per_second (every route the tenant's key calls)."""
        r = tenant.requests_per_second
        if r <= 0:
            return None
        with self._lock:
            s, now, cap = self._s(tenant), self.clock(), max(1.0, r)
            s.bucket = cap if s.bucket < 0 else min(cap, s.bucket + (now - s.filled_at) * r)
            s.filled_at = now
            if s.bucket >= 1.0:
                s.bucket -= 1.0
                return None
            wait = max(1, math.ceil((1.0 - s.bucket) / r))
        return Refusal("requests_per_second", wait, f"tenant {tenant.name!r} is over its limit of {r:g} requests "
                                                     f"per second; retry after {wait} s")

    def admit(self, tenant: Tenant) -> Refusal | None:
        """A request that will reach the engine: tokens_per_minute and concurrent. On None the caller must
        `finish(tenant)` when the request ends."""
        with self._lock:
            s, now = self._s(tenant), self.clock()
            t = tenant.tokens_per_minute
            if t > 0:
                self._trim(s, now)
                if s.spent_total >= t:
                    wait = self._tokens_free_after(s, t, now)
                    return Refusal("tokens_per_minute", wait, f"tenant {tenant.name!r} generated {s.spent_total} "
                                   f"tokens in the last minute, its limit is {t}; retry after {wait} s")
            c = tenant.concurrent
            if c > 0 and s.running >= c:
                return Refusal("concurrent", 1, f"tenant {tenant.name!r} already has {s.running} requests running, "
                                                f"its limit is {c}; retry after one ends")
            s.running += 1
        return None

    def finish(self, tenant: Tenant) -> None:
        with self._lock:
            s = self._s(tenant)
            s.running = max(0, s.running - 1)

    def spend(self, tenant: Tenant, tokens: int) -> Refusal | None:
        """Count `tokens` generated for `tenant`; a Refusal when the last minute's total is now over its limit
        (the tokens are counted either way: they were generated)."""
        if tokens <= 0:
            return None
        with self._lock:
            s, now = self._s(tenant), self.clock()
            s.spent.append((now, tokens))
            s.spent_total += tokens
            self._trim(s, now)
            t = tenant.tokens_per_minute
            if t <= 0 or s.spent_total <= t:
                return None
            wait = self._tokens_free_after(s, t, now)
        return Refusal("tokens_per_minute", wait, f"tenant {tenant.name!r} used its budget of {t} generated tokens "
                                                  f"per minute; retry after {wait} s")

    def running(self, tenant: Tenant) -> int:
        return self._s(tenant).running

    @staticmethod
    def _tokens_free_after(s: _State, limit: int, now: float) -> int:
        """Seconds until the window's total falls below `limit` (the oldest entries leave first)."""
        total = s.spent_total
        for t0, n in s.spent:
            total -= n
            if total < limit:
                return max(1, math.ceil(t0 + WINDOW_S - now))
        return 1
