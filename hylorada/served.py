"""The served adapter format (DESIGN.md §3, docs/format.md): constants, loading, validation.

    my-adapter/adapter_config.json          PEFT LoRA config, lora_alpha == r, use_rslora false (scale 1)
    my-adapter/adapter_model.safetensors    base_model.model.<module>.lora_A.weight [r, in], .lora_B.weight [out, r] = B'
    my-adapter/hylorada.json                format_version, kind, base identity, dynamic parts
    my-adapter/hylorada_dynamic.safetensors c, w_pos, position_bias, daa.*, landmark.*

Per layer the served math is y = c * (W x + p(pos) * B' A x) + b (functional.served_linear).
Every check raises AdapterError naming the file, the tensor and the reason. Pickle files are
refused by name and never opened.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .base_id import base_shape_hash  # noqa: F401  (one hash, shared with the native checkpoint)

FORMAT_VERSION = 1
KINDS = ("hylorada", "lora", "dora")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
META = "hylorada.json"
DYNAMIC = "hylorada_dynamic.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
PEFT_PREFIX = "base_model.model.model."
LORA_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.([\w.]+)\.lora_([AB])\.weight$")
DYN_KEY = re.compile(r"^layers\.(\d+)\.(?:([\w.]+_proj)\.(c|w_pos)|daa\.(head_scale|bucket_bias)|landmark\.(keys|values|gate))$")
SHORT_TO_MODULE = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
                   "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
                   "down_proj": "mlp.down_proj"}


class AdapterError(ValueError):
    """A served adapter that must not be used. str() = '<file>: tensor <name>: <reason>'."""

    def __init__(self, file: str | Path, reason: str, tensor: str | None = None):
        self.file, self.tensor, self.reason = str(file), tensor, reason
        where = f"{self.file}: tensor {tensor!r}: " if tensor else f"{self.file}: "
        super().__init__(where + reason)


def module_name(module: str) -> str:
    """'q_proj' -> 'self_attn.q_proj'; qualified names pass through."""
    return SHORT_TO_MODULE.get(module, module)


def lora_key(layer: int, module: str, which: str) -> str:
    """PEFT key of A or B for one layer: base_model.model.model.layers.{i}.{module}.lora_{which}.weight."""
    return f"{PEFT_PREFIX}layers.{layer}.{module_name(module)}.lora_{which}.weight"


# --- the base model's identity ------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _linear_shapes(config_json: str) -> dict[str, tuple[int, int]]:
    from transformers import AutoConfig, AutoModelForCausalLM
    d = json.loads(config_json)
    cfg = AutoConfig.for_model(d.pop("model_type"), **d)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return {n.removeprefix("model."): tuple(m.weight.shape) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")}


def base_linear_shapes(hf_config) -> dict[str, tuple[int, int]]:
    """'layers.{i}.self_attn.q_proj' -> (d_out, d_in) for every decoder linear (built on the meta device)."""
    return _linear_shapes(hf_config.to_json_string(use_diff=False))


# --- the loaded adapter ----------------------------------------------------------------------

@dataclass
class ServedAdapter:
    """A validated served adapter. `lora` holds PEFT keys with B' = s*B (scale 1), `dynamic` the side file.

    Shapes: A [r, d_in], B' [d_out, r], c [d_out], w_pos [], position_bias [nb],
    daa head_scale [H], bucket_bias [H, nb], landmark keys/values [K, hidden], gate [].
    """
    path: Path
    meta: dict
    peft_config: dict
    lora: dict[str, Tensor]
    dynamic: dict[str, Tensor] = field(default_factory=dict)
    rank: int = 0
    target_modules: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def layer_lora(self, i: int, module: str) -> tuple[Tensor, Tensor] | None:
        """(A [r, in], B' [out, r]) of layer i's module, or None when that module is not adapted."""
        a = self.lora.get(lora_key(i, module, "A"))
        return None if a is None else (a, self.lora[lora_key(i, module, "B")])

    def c(self, i: int, module: str) -> Tensor | None:
        return self.dynamic.get(f"layers.{i}.{module_name(module)}.c")

    def w_pos(self, i: int, module: str) -> Tensor | None:
        return self.dynamic.get(f"layers.{i}.{module_name(module)}.w_pos")

    @property
    def position_bias(self) -> Tensor | None:
        return self.dynamic.get("position_bias")

    def landmark(self, i: int) -> tuple[Tensor, Tensor, Tensor] | None:
        k = self.dynamic.get(f"layers.{i}.landmark.keys")
        return None if k is None else (k, self.dynamic[f"layers.{i}.landmark.values"], self.dynamic[f"layers.{i}.landmark.gate"])

    def daa(self, i: int) -> tuple[Tensor, Tensor] | None:
        h = self.dynamic.get(f"layers.{i}.daa.head_scale")
        return None if h is None else (h, self.dynamic[f"layers.{i}.daa.bucket_bias"])

    @property
    def dynamic_parts(self) -> list[str]:
        """Names of the per-token/attention parts present (they cannot merge into W)."""
        return [k for k in ("position_bias", "daa", "landmarks") if self.meta.get(k)] + \
            ([f"attention={self.meta['attention']['mode']}"] if (self.meta.get("attention") or {}).get("mode", "full") != "full" else [])

    @property
    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.lora.values(), *self.dynamic.values()])

    def modules(self) -> list[tuple[int, str]]:
        """(layer, qualified module) of every adapted linear, sorted."""
        return sorted((int(m.group(1)), m.group(2)) for k in self.lora if (m := LORA_KEY.match(k)) and m.group(3) == "A")


# --- loading + validation --------------------------------------------------------------------

def read_json(path: Path) -> dict:
    if not path.is_file():
        raise AdapterError(path, "missing file")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(path, f"not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise AdapterError(path, "must hold a JSON object")
    return d


def read_tensors(path: Path) -> dict[str, Tensor]:
    """safetensors only; a pickle file in its place is refused by name, never opened."""
    if not path.is_file():
        for suf in PICKLE_SUFFIXES:
            if path.with_suffix(suf).exists():
                raise AdapterError(path.with_suffix(suf), f"pickle file found instead of {path.name}; pickle is never "
                                   "loaded (it can run code) — re-save the tensors as safetensors")
        raise AdapterError(path, "missing file")
    from safetensors.torch import load_file
    try:
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure is a refusal
        raise AdapterError(path, f"not a readable safetensors file ({e})") from None
    for k, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise AdapterError(path, "contains NaN or Inf", k)
    return tensors


def peft_scaling(cfg: dict, layer: int, module: str, rank: int) -> float:
    """PEFT's own per-module scale: alpha (alpha_pattern, first key matching as in PEFT)
    over rank or sqrt(rank). rank: the stored tensor's (equal to rank_pattern's entry for PEFT files)."""
    from .functional import lora_scaling
    path = f"model.layers.{layer}.{module}"

    def pick(pattern: dict, default):            # peft.utils.other.get_pattern_key: the first key that matches
        hit = next((k for k in (pattern or {}) if re.match(rf"(.*\.)?({k})$", path)), None)
        return default if hit is None else pattern[hit]
    return lora_scaling(pick(cfg.get("alpha_pattern"), cfg["lora_alpha"]), rank, bool(cfg.get("use_rslora")))


def _check_peft_config(path: Path, cfg: dict, plain: bool) -> None:
    f = path / ADAPTER_CONFIG
    if cfg.get("peft_type") != "LORA":
        raise AdapterError(f, f"peft_type must be 'LORA' (got {cfg.get('peft_type')!r})")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in cfg:
            raise AdapterError(f, f"missing field {key!r}")
    if cfg.get("use_dora"):
        raise AdapterError(f, "use_dora is true: a PEFT DoRA adapter must be converted first "
                           "(hylorada convert-peft PEFT_DIR OUT_DIR --base MODEL_DIR)")
    if cfg.get("lora_bias"):
        raise AdapterError(f, "lora_bias is true: the served form (and vLLM) has no LoRA bias")
    if cfg.get("modules_to_save"):
        raise AdapterError(f, f"modules_to_save {cfg['modules_to_save']!r}: full modules cannot be served as a LoRA")
    if not plain and (cfg["lora_alpha"] != cfg["r"] or cfg.get("use_rslora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern")):
        raise AdapterError(f, "a HyLoRADA served adapter needs lora_alpha == r, use_rslora false and no rank/alpha "
                           "patterns (the scale lives in B')")


def _check_meta(path: Path, meta: dict) -> None:
    f = path / META
    if meta.get("format_version") != FORMAT_VERSION:
        raise AdapterError(f, f"unknown format_version {meta.get('format_version')!r} (this reader knows {FORMAT_VERSION}; "
                           "a newer hylorada wrote it — upgrade hylorada)")
    if meta.get("kind") not in KINDS:
        raise AdapterError(f, f"kind must be one of {KINDS} (got {meta.get('kind')!r})")
    for part in ("position_bias", "daa", "landmarks", "rope_scaling"):
        if meta.get(part) is not None and not isinstance(meta[part], dict):
            raise AdapterError(f, f"{part} must be an object or null")


def load_served(path: str | Path, base_config=None, max_rank: int | None = None) -> ServedAdapter:
    """Read and validate a served adapter folder (or a plain PEFT LoRA folder, kind 'lora').

    base_config: a transformers config; when given, every tensor's name and shape and the
    base's shape_hash are checked against it. max_rank: the largest rank the server allows.
    """
    from .served_checks import check_against_base, check_consistency
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(path, "adapter folder does not exist")
    cfg = read_json(path / ADAPTER_CONFIG)
    plain = not (path / META).exists()
    _check_peft_config(path, cfg, plain)
    meta = {"format_version": FORMAT_VERSION, "kind": "lora", "base": None, "position_bias": None, "daa": None,
            "landmarks": None, "rope_scaling": None, "attention": {"mode": "full"}, "has_scale": False} \
        if plain else read_json(path / META)
    _check_meta(path, meta)
    lora = read_tensors(path / ADAPTER_WEIGHTS)
    need_dyn = any(meta.get(p) for p in ("position_bias", "daa", "landmarks", "has_scale"))
    dynamic = read_tensors(path / DYNAMIC) if (need_dyn or (path / DYNAMIC).exists()) else {}
    ad = ServedAdapter(path=path, meta=meta, peft_config=cfg, lora=lora, dynamic=dynamic,
                       target_modules=list(cfg["target_modules"]) if not isinstance(cfg["target_modules"], str) else [cfg["target_modules"]])
    check_consistency(ad)
    if plain:  # fold PEFT's own scale so lora always holds B'
        for (i, mod) in ad.modules():
            s = peft_scaling(cfg, i, mod, ad.lora[lora_key(i, mod, "A")].shape[0])
            if s != 1.0:
                ad.lora[lora_key(i, mod, "B")] = ad.lora[lora_key(i, mod, "B")] * s
    ad.rank = max(a.shape[0] for (a, _) in (ad.layer_lora(i, m) for i, m in ad.modules()))
    if max_rank is not None and ad.rank > max_rank:
        i, m = next((i, m) for i, m in ad.modules() if ad.layer_lora(i, m)[0].shape[0] == ad.rank)
        raise AdapterError(path / ADAPTER_WEIGHTS, f"rank {ad.rank} is above the server's max_rank {max_rank}", lora_key(i, m, "A"))
    if base_config is not None:
        check_against_base(ad, base_config)
    return ad


__all__ = ["AdapterError", "ServedAdapter", "load_served", "base_shape_hash", "base_linear_shapes", "lora_key",
           "peft_scaling", "read_json", "read_tensors",
           "module_name", "FORMAT_VERSION", "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "META", "DYNAMIC"]
