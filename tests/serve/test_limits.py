"""Per-tenant limits (hylorada_serve/limits.py) on a driven clock: each limit is hit, refused with the right
Retry-After, and frees again when it says it will; tenants do not share counts; no limit means none."""
from __future__ import annotations

from hylorada_serve.keys import Tenant
from hylorada_serve.limits import Limiter


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_requests_per_second_is_a_token_bucket():
    clock = Clock()
    lim, t = Limiter(clock), Tenant("a", requests_per_second=2)
    assert lim.rate(t) is None and lim.rate(t) is None           # burst of max(1, rate)
    r = lim.rate(t)
    assert r.limit == "requests_per_second" and r.retry_after == 1 and "2 requests per second" in r.message
    clock.t += 0.5                                                # refills 1 token
    assert lim.rate(t) is None and lim.rate(t) is not None
    slow = Tenant("s", requests_per_second=0.2)                   # one request per 5 s
    assert lim.rate(slow) is None
    r = lim.rate(slow)
    assert r.retry_after == 5
    clock.t += 5
    assert lim.rate(slow) is None
    assert all(lim.rate(Tenant("free")) is None for _ in range(1000))


def test_concurrent():
    lim, t = Limiter(Clock()), Tenant("a", concurrent=2)
    assert lim.admit(t) is None and lim.admit(t) is None
    r = lim.admit(t)
    assert r.limit == "concurrent" and r.retry_after == 1 and lim.running(t) == 2
    lim.finish(t)
    assert lim.admit(t) is None
    other = Tenant("b", concurrent=2)                             # its own count
    assert lim.admit(other) is None and lim.admit(other) is None


def test_tokens_per_minute_window_and_retry_after():
    clock = Clock()
    lim, t = Limiter(clock), Tenant("a", tokens_per_minute=100)
    assert lim.admit(t) is None
    assert lim.spend(t, 60) is None                               # 60 of 100
    clock.t += 20
    assert lim.spend(t, 40) is None                               # 100 of 100: at the limit, not over
    lim.finish(t)
    r = lim.admit(t)                                              # used up: refused before the engine
    assert r.limit == "tokens_per_minute" and r.retry_after == 40, r  # the first 60 leave the window at +60 s
    clock.t += 39
    assert lim.admit(t) is not None
    clock.t += 1.5
    assert lim.admit(t) is None                                   # 40 of 100 in the window now
    r = lim.spend(t, 61)                                          # over: the stream that did it is cut
    assert r is not None and r.limit == "tokens_per_minute" and r.retry_after == 20   # the 40 leave in 19.5 s
    assert lim.spend(Tenant("b", tokens_per_minute=0), 10 ** 9) is None


def test_limits_follow_the_tenant_name_across_a_reload():
    lim = Limiter(Clock())
    old, new = Tenant("a", concurrent=1), Tenant("a", concurrent=2, adapters=("x",))
    assert lim.admit(old) is None and lim.admit(old) is not None
    assert lim.admit(new) is None and lim.admit(new) is not None      # the running request still counts
