"""Every environment variable the patches read, read here and nowhere else (a small typed `Settings`).

    HYLORADA_ATTENTION              server-wide attention mode: a JSON object with hylorada.json's "attention"
                                    keys, e.g. '{"mode": "sink", "sink_tokens": 4, "window": 1024}'; unset or
                                    empty: full attention (parsed by attn_state.server_default)
    HYLORADA_LORA_PATH              grouped | vllm | static: the LoRA path an engine starts on (lora_path.default_path);
                                    unset: grouped on the CPU, vLLM's own elsewhere
    HYLORADA_CPU_LORA_BYTES         a byte budget for the engine's CPU cache of adapters (residency.py), beside
                                    vLLM's count (--max-cpu-loras); unset or 0: the count only
    HYLORADA_SPIN_NAP_US            microseconds an engine process's shm-ring busy wait sleeps per check (spin_nap.py);
                                    unset: 50; 0: vLLM's sched_yield spin
    HYLORADA_CHECKED_KEY            hex key (>= 32 hex digits) of the checked stamps (hylorada.format.stamp) that
                                    hylorada-serve writes on the adapter copies it validated; loading.py then
                                    skips re-checking a stamped folder's values; unset: every load checks all
    HYLORADA_ALLOW_UNVERIFIED_VLLM  "1": run on a CPU build of vLLM the patches are intended for but not verified on
                                    (apply.py); never lifts the refusal of non-CPU platforms

Read at each use, not cached: engine processes inherit the caller's environment, and a bad value fails where it
is used (an unknown LoRA path when the engine builds its LoRA manager, a malformed attention mode at install).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

ATTENTION = "HYLORADA_ATTENTION"
LORA_PATH = "HYLORADA_LORA_PATH"
ALLOW_UNVERIFIED_VLLM = "HYLORADA_ALLOW_UNVERIFIED_VLLM"
CPU_LORA_BYTES = "HYLORADA_CPU_LORA_BYTES"
SPIN_NAP_US = "HYLORADA_SPIN_NAP_US"
CHECKED_KEY = "HYLORADA_CHECKED_KEY"


@dataclass(frozen=True)
class Settings:
    attention: str = ""                 # raw JSON text, stripped ("" = full attention)
    lora_path: str | None = None        # as given (None = unset: the platform's default)
    allow_unverified_vllm: bool = False
    cpu_lora_bytes: int = 0             # 0 = no byte budget
    spin_nap_us: float = 50.0           # 0 = vLLM's sched_yield spin
    checked_key: bytes = b""            # b"" = no stamp is trusted

    @classmethod
    def read(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """From `env` (default: os.environ)."""
        env = os.environ if env is None else env
        raw = env.get(CPU_LORA_BYTES, "").strip() or "0"
        if not raw.isdigit():
            raise ValueError(f"{CPU_LORA_BYTES} must be a whole number of bytes (got {raw!r})")
        nap = env.get(SPIN_NAP_US, "").strip() or str(cls.spin_nap_us)
        try:
            nap_us = float(nap)
        except ValueError:
            nap_us = -1.0
        if not 0 <= nap_us <= 10_000:
            raise ValueError(f"{SPIN_NAP_US} must be microseconds between 0 and 10000 (got {nap!r})")
        key = env.get(CHECKED_KEY, "").strip()
        try:
            checked_key = bytes.fromhex(key)
        except ValueError:
            checked_key = b"?"
        from hylorada.format.stamp import MIN_KEY_BYTES
        if key and len(checked_key) < MIN_KEY_BYTES:
            why = "not hex" if checked_key == b"?" else f"{len(key)} characters"
            raise ValueError(f"{CHECKED_KEY} must be at least {2 * MIN_KEY_BYTES} hex digits (got {why})")
        return cls(attention=env.get(ATTENTION, "").strip(), lora_path=env.get(LORA_PATH),
                   allow_unverified_vllm=env.get(ALLOW_UNVERIFIED_VLLM) == "1", cpu_lora_bytes=int(raw),
                   spin_nap_us=nap_us, checked_key=checked_key)
