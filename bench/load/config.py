"""BenchConfig: every knob of one load-generator run, validated at construction.

One error lists every bad field (like HyLoRADAConfig). The target must be a loopback address:
the benchmark never sends load anywhere but this machine.
"""
from __future__ import annotations

import ipaddress
import math
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit


class BenchConfigError(ValueError):
    """Raised with every problem of a BenchConfig, one per line."""


def is_loopback_host(host: str | None) -> bool:
    """True for 'localhost', any 127.0.0.0/8 address and ::1 — nothing else (no DNS lookups)."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_loopback_url(url: str) -> None:
    """Refuse a target that is not http(s) on a loopback host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not is_loopback_host(parts.hostname):
        raise BenchConfigError(f"url {url!r}: only http(s) on a loopback host (127.0.0.0/8, localhost, ::1) is allowed")


@dataclass
class BenchConfig:
    # --- target ---
    url: str = "http://127.0.0.1:8000"        # server root; requests go to {url}/v1/completions
    adapters: tuple[str, ...] = ()            # OpenAI `model` names, most popular first (Zipf rank 1 = first)
    # --- workload (S-LoRA knobs) ---
    alpha: float = 1.0                        # Zipf popularity exponent over `adapters` (0 = uniform)
    rate: float = math.inf                    # mean requests/s; inf = all arrive at t=0 (closed loop at max_concurrency)
    cv: float = 1.0                           # inter-arrival coefficient of variation (1 = Poisson, >1 bursty gamma)
    prompt_len: tuple[int, int] = (48, 48)    # prompt tokens, uniform in [lo, hi]
    output_len: tuple[int, int] = (48, 48)    # output tokens, uniform in [lo, hi] (sent with ignore_eos)
    num_requests: int = 96                    # requests generated (upper bound on the run's size)
    duration_s: float | None = None           # drop requests arriving after this (with a finite rate)
    max_concurrency: int = 16                 # requests in flight at most
    seed: int = 0                             # same seed => same requests for every system
    temperature: float = 0.0
    # --- bounds ---
    request_timeout_s: float = 120.0          # one request, end to end
    max_total_s: float = 900.0                # the whole run; unfinished requests are cancelled and counted as errors
    warmup: int = 4                           # short unmeasured requests before the clock starts (cycle adapters)
    # --- output ---
    label: str = "run"                        # name of the system under test in results and plots
    out_dir: str | None = None                # write {label}.json and {label}_cdf.png here
    progress: bool = True
    extra_body: dict = field(default_factory=dict)   # merged into each request body (server-specific knobs)

    def __post_init__(self):
        self.adapters = tuple(self.adapters)
        self.prompt_len, self.output_len = tuple(self.prompt_len), tuple(self.output_len)
        problems = []
        try:
            check_loopback_url(self.url)
        except BenchConfigError as e:
            problems.append(str(e))
        if not self.adapters or any(not isinstance(a, str) or not a for a in self.adapters):
            problems.append(f"adapters {self.adapters!r}: need at least one non-empty model name")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            problems.append(f"alpha {self.alpha}: must be a finite number >= 0")
        if not (self.rate > 0):
            problems.append(f"rate {self.rate}: must be > 0 (inf allowed)")
        if not (math.isfinite(self.cv) and self.cv > 0):
            problems.append(f"cv {self.cv}: must be a finite number > 0")
        for name in ("prompt_len", "output_len"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not all(isinstance(v, int) for v in lo_hi) or not 1 <= lo_hi[0] <= lo_hi[1]:
                problems.append(f"{name} {lo_hi!r}: need two ints 1 <= lo <= hi")
        if not (isinstance(self.num_requests, int) and 1 <= self.num_requests <= 100_000):
            problems.append(f"num_requests {self.num_requests}: must be an int in 1..100000")
        if self.duration_s is not None and not (self.duration_s > 0 and math.isfinite(self.duration_s)):
            problems.append(f"duration_s {self.duration_s}: must be > 0 and finite (or None)")
        if self.duration_s is not None and math.isinf(self.rate):
            problems.append("duration_s needs a finite rate (with rate=inf every request arrives at t=0)")
        if not (isinstance(self.max_concurrency, int) and 1 <= self.max_concurrency <= 4096):
            problems.append(f"max_concurrency {self.max_concurrency}: must be an int in 1..4096")
        if not (self.temperature >= 0):
            problems.append(f"temperature {self.temperature}: must be >= 0")
        for name in ("request_timeout_s", "max_total_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 < v <= 24 * 3600):
                problems.append(f"{name} {v}: must be in (0, 86400] seconds")
        if not (isinstance(self.warmup, int) and 0 <= self.warmup <= 1024):
            problems.append(f"warmup {self.warmup}: must be an int in 0..1024")
        if not self.label or any(c in self.label for c in "/\\ "):
            problems.append(f"label {self.label!r}: non-empty, no slashes or spaces (it names files)")
        if problems:
            raise BenchConfigError("invalid BenchConfig:\n  " + "\n  ".join(problems))

    def to_json(self) -> dict:
        d = asdict(self)
        d["rate"] = "inf" if math.isinf(self.rate) else self.rate
        return d

    def workload_args(self) -> dict:
        """The arguments of bench.load.workload.generate this config implies."""
        return dict(num_requests=self.num_requests, adapters=list(self.adapters), alpha=self.alpha, rate=self.rate,
                    cv=self.cv, prompt_len=self.prompt_len, output_len=self.output_len, seed=self.seed)
