"""PEFT's adapter_config.json rules, once: what a servable PEFT LoRA config is, and PEFT's per-module scale."""
from __future__ import annotations

import re
from pathlib import Path

from hylorada.functional import lora_scaling

from .layout import ADAPTER_CONFIG, AdapterError


def peft_scaling(cfg: dict, layer: int, module: str, rank: int) -> float:
    """PEFT's own per-module scale: alpha (alpha_pattern, first key matching as in PEFT)
    over rank or sqrt(rank). rank: the stored tensor's (equal to rank_pattern's entry for PEFT files)."""
    path = f"model.layers.{layer}.{module}"

    def pick(pattern: dict, default):            # peft.utils.other.get_pattern_key: the first key that matches
        hit = next((k for k in (pattern or {}) if re.match(rf"(.*\.)?({k})$", path)), None)
        return default if hit is None else pattern[hit]
    return lora_scaling(pick(cfg.get("alpha_pattern"), cfg["lora_alpha"]), rank, bool(cfg.get("use_rslora")))


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
    if cfg.get("use_dora"):
        raise AdapterError(f, "use_dora is true: a PEFT DoRA adapter must be converted first "
                           "(hylorada convert-peft PEFT_DIR OUT_DIR --base MODEL_DIR)")
    if not plain and (cfg["lora_alpha"] != cfg["r"] or cfg.get("use_rslora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern")):
        raise AdapterError(f, "a HyLoRADA served adapter needs lora_alpha == r, use_rslora false and no rank/alpha "
                           "patterns (the scale lives in B')")
