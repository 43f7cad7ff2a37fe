"""PEFT's adapter_config.json rules, once: what a servable PEFT LoRA config is, and PEFT's per-module scale.

PEFT resolves `alpha_pattern` keys as regular expressions (`re.match(rf"(.*\\.)?({key})$", module)`). A key is
user content, and Python's `re` can backtrack for minutes while holding the GIL (one such key froze the
server's event loop). So patterns are matched with the `regex` engine (a transformers dependency) with a
per-match time bound and without the GIL, and their number and length are bounded; a key that times out
is refused with the reason.
"""
from __future__ import annotations

import math
from pathlib import Path

import regex

from hylorada.functional import lora_scaling

from .layout import ADAPTER_CONFIG, AdapterError


def peft_scaling(cfg: dict, layer: int, module: str, rank: int) -> float:
    """PEFT's own per-module scale: alpha (alpha_pattern, first key matching as in PEFT)
    over rank or sqrt(rank). rank: the stored tensor's (equal to rank_pattern's entry for PEFT files)."""
    path = f"model.layers.{layer}.{module}"

    def pick(pattern: dict, default):            # peft.utils.other.get_pattern_key: the first key that matches
        hit = next((k for k in (pattern or {}) if pattern_matches(k, path)), None)
        return default if hit is None else pattern[hit]
    return lora_scaling(pick(cfg.get("alpha_pattern"), cfg["lora_alpha"]), rank, bool(cfg.get("use_rslora")))


MAX_PATTERNS, MAX_PATTERN_LEN, MATCH_SECONDS = 1024, 512, 0.05


def pattern_matches(key: str, path: str, file: Path | str = "adapter_config.json") -> bool:
    """PEFT's rule `(.*\\.)?(key)$` on a module path, bounded in time; AdapterError for a bad or slow key."""
    try:
        return regex.match(rf"(.*\.)?({key})$", path, timeout=MATCH_SECONDS, concurrent=True) is not None
    except TimeoutError:
        raise AdapterError(file, f"alpha_pattern key {key[:80]!r} took over {MATCH_SECONDS * 1000:.0f} ms to match "
                           f"{path!r} (a backtracking regular expression); use module names") from None
    except regex.error as e:
        raise AdapterError(file, f"alpha_pattern key {key[:80]!r} is not a valid pattern ({e})") from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_fields(f: Path, cfg: dict) -> None:
    """Types and ranges of the fields we read: r, lora_alpha, target_modules, use_rslora, the patterns."""
    bad = []
    r, alpha, tm = cfg.get("r"), cfg.get("lora_alpha"), cfg.get("target_modules")
    if not (_is_int(r) and 1 <= r <= 4096):
        bad.append(f"r must be an integer in [1, 4096] (got {r!r})")
    if not ((_is_int(alpha) or isinstance(alpha, float)) and math.isfinite(alpha) and 0 < alpha <= 1e6):
        bad.append(f"lora_alpha must be a positive number (got {alpha!r})")
    if not (isinstance(tm, str) or (isinstance(tm, list) and tm and all(isinstance(t, str) and 0 < len(t) <= 256 for t in tm))):
        bad.append("target_modules must be a module name or a non-empty list of names")
    for flag in ("use_rslora", "use_dora", "lora_bias", "fan_in_fan_out"):
        if cfg.get(flag) not in (None, True, False):
            bad.append(f"{flag} must be true or false (got {cfg.get(flag)!r})")
    for name in ("alpha_pattern", "rank_pattern"):
        pat = cfg.get(name)
        if pat in (None, {}):
            continue
        if not isinstance(pat, dict) or len(pat) > MAX_PATTERNS:
            bad.append(f"{name} must be an object of at most {MAX_PATTERNS} entries")
            continue
        for k, v in pat.items():
            if len(k) > MAX_PATTERN_LEN or not ((_is_int(v) or isinstance(v, float)) and math.isfinite(v) and 0 < v <= 1e6):
                bad.append(f"{name} entry {k[:80]!r}: keys up to {MAX_PATTERN_LEN} characters, values positive numbers")
                break
    if bad:
        raise AdapterError(f, "; ".join(bad))


def check_convertible(f: Path, cfg: dict) -> None:
    """What no LoRA (ours or vLLM's) can carry: raise AdapterError naming the field."""
    if cfg.get("peft_type") != "LORA":
        raise AdapterError(f, f"peft_type must be 'LORA' (got {cfg.get('peft_type')!r})")
    if cfg.get("lora_bias"):
        raise AdapterError(f, "lora_bias is true: the served form (and vLLM) has no LoRA bias term; merge this "
                           "adapter with PEFT (merge_and_unload) instead")
    if cfg.get("modules_to_save"):
        raise AdapterError(f, f"modules_to_save {cfg['modules_to_save']!r}: full trained modules cannot be "
                           "carried by a LoRA; merge with PEFT instead")


def check_peft_config(path: Path, cfg: dict, plain: bool) -> None:
    """A served folder's adapter_config.json; plain: a PEFT LoRA folder without hylorada.json."""
    f = path / ADAPTER_CONFIG
    check_convertible(f, cfg)
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in cfg:
            raise AdapterError(f, f"missing field {key!r}")
    check_fields(f, cfg)
    if cfg.get("use_dora"):
        raise AdapterError(f, "use_dora is true: a PEFT DoRA adapter must be converted first "
                           "(hylorada convert-peft PEFT_DIR OUT_DIR --base MODEL_DIR)")
    if not plain and (cfg["lora_alpha"] != cfg["r"] or cfg.get("use_rslora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern")):
        raise AdapterError(f, "a HyLoRADA served adapter needs lora_alpha == r, use_rslora false and no rank/alpha "
                           "patterns (the scale lives in B')")
