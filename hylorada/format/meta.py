"""`ServedMeta`: hylorada.json parsed and validated once, then read as typed fields everywhere.

    {"format_version": 1, "kind": "hylorada" | "lora" | "dora",
     "base": {"name", "architecture", "shape_hash"} | null,
     "position_bias": {"num_buckets", "max_position"} | null,     # p(pos) = 1 + σ(w_pos)·tanh(bias[bucket(pos)])
     "daa": {"num_buckets", "max_position"} | null,               # bucket of the query-key distance
     "landmarks": {"num_landmarks"} | null,
     "rope_scaling": {"rope_type": linear|dynamic|yarn, "factor", "original_max_position_embeddings"} | null,
     "attention": {"mode": full|sink|s2, "sink_tokens", "window", "s2_group_size_ratio"},
     "has_scale": bool, "norms": bool, "embeddings": bool,          # norms: trained RMSNorm weights in the side file;
     "source": {...} | null}                                        # embeddings: trained input-embedding rows there

Every field is type- and range-checked by `ServedMeta.parse`, which raises one AdapterError listing every
bad field (bools are not integers here, "8" is not 8). A RoPE setting of type "default" means no scaling
and is normalised to None here, the one place that does it. The ranges are what the served path can
compute: bucketing needs max_position > num_buckets >= 4 (functional.position_bucket takes ln(max/half)).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from .layout import FORMAT_VERSION, KINDS, AdapterError

ATTENTION_MODES = ("full", "sink", "s2")
ROPE_TYPES = ("linear", "dynamic", "yarn")
MAX_BUCKETS = 256            # the served tables are allocated once at this width (patches.static_path)
MAX_POSITION = 1 << 24          # 16M positions: past any context vLLM can run
MAX_LANDMARKS = 4096
MAX_ROPE_FACTOR = 1024.0


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


class _Errors:
    """Collects 'field: reason' strings; raise_if() raises one AdapterError naming all of them."""

    def __init__(self):
        self.items: list[str] = []

    def need(self, ok: bool, msg: str) -> bool:
        if not ok:
            self.items.append(msg)
        return ok

    def raise_if(self, file) -> None:
        if self.items:
            raise AdapterError(file, "; ".join(self.items))


def _obj(err: _Errors, d: dict, key: str, keys: tuple[str, ...]) -> dict | None:
    """d[key] as an object (None when null/absent); unknown keys are reported."""
    v = d.get(key)
    if v is None:
        return None
    if not err.need(isinstance(v, dict), f"{key} must be an object or null (got {type(v).__name__})"):
        return None
    extra = sorted(set(v) - set(keys))
    err.need(not extra, f"{key} has unknown fields {extra}")
    return v


@dataclass(frozen=True)
class Buckets:
    """Log-bucket table (position bias, DAA): num_buckets even in [4, 4096], max_position in (num_buckets, 2^24]."""
    num_buckets: int = 64
    max_position: int = 32768

    @classmethod
    def parse(cls, err: _Errors, name: str, d: dict | None) -> "Buckets | None":
        if d is None:
            return None
        nb, mp = d.get("num_buckets", 64), d.get("max_position", 32768)
        ok = err.need(_is_int(nb) and 4 <= nb <= MAX_BUCKETS and nb % 2 == 0,
                      f"{name}.num_buckets must be an even integer in [4, {MAX_BUCKETS}] (got {nb!r})")
        ok &= err.need(_is_int(mp) and (not _is_int(nb) or mp > nb) and mp <= MAX_POSITION,
                       f"{name}.max_position must be an integer above num_buckets and at most {MAX_POSITION} (got {mp!r})")
        return cls(nb, mp) if ok else None


@dataclass(frozen=True)
class Landmarks:
    num_landmarks: int = 8

    @classmethod
    def parse(cls, err: _Errors, d: dict | None) -> "Landmarks | None":
        if d is None:
            return None
        k = d.get("num_landmarks")
        ok = err.need(_is_int(k) and 1 <= k <= MAX_LANDMARKS,
                      f"landmarks.num_landmarks must be an integer in [1, {MAX_LANDMARKS}] (got {k!r})")
        return cls(k) if ok else None


@dataclass(frozen=True)
class Attention:
    """Served attention: full (default), sink (first sink_tokens + a window of recent keys), s2 (LongLoRA groups)."""
    mode: str = "full"
    sink_tokens: int = 0
    window: int = 1024
    s2_group_size_ratio: float = 0.25

    @classmethod
    def parse(cls, err: _Errors, d: dict | None) -> "Attention":
        if d is None:
            return cls()
        mode, sinks = d.get("mode", "full"), d.get("sink_tokens", 0)
        window, ratio = d.get("window", 1024), d.get("s2_group_size_ratio", 0.25)
        ok = err.need(mode in ATTENTION_MODES, f"attention.mode must be one of {ATTENTION_MODES} (got {mode!r})")
        ok &= err.need(_is_int(sinks) and 0 <= sinks <= MAX_POSITION, f"attention.sink_tokens must be an integer >= 0 (got {sinks!r})")
        ok &= err.need(_is_int(window) and 1 <= window <= MAX_POSITION, f"attention.window must be an integer >= 1 (got {window!r})")
        ok &= err.need(_is_num(ratio) and 0 < ratio <= 1, f"attention.s2_group_size_ratio must be in (0, 1] (got {ratio!r})")
        if ok and mode == "sink":
            ok &= err.need(sinks >= 1, "attention.mode 'sink' needs sink_tokens >= 1")
        return cls(mode, sinks, window, float(ratio)) if ok else cls()

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BaseRef:
    """The base an adapter was made for; shape_hash is checked against the serving base."""
    name: str | None = None
    architecture: str | None = None
    shape_hash: str | None = None

    @classmethod
    def parse(cls, err: _Errors, d: dict | None) -> "BaseRef | None":
        if d is None:
            return None
        vals = {k: d.get(k) for k in ("name", "architecture", "shape_hash")}
        ok = True
        for k, v in vals.items():
            ok &= err.need(v is None or (isinstance(v, str) and len(v) <= 4096), f"base.{k} must be a string or null (got {type(v).__name__})")
        return cls(**vals) if ok else None


def normalise_rope(err: _Errors, d) -> dict | None:
    """The comparable RoPE setting: None for no scaling (null, {} or rope_type 'default'), else a checked dict."""
    if d is None or d == {}:
        return None
    if not err.need(isinstance(d, dict), f"rope_scaling must be an object or null (got {type(d).__name__})"):
        return None
    kind = d.get("rope_type", "default")
    if kind == "default":
        return None
    ok = err.need(kind in ROPE_TYPES, f"rope_scaling.rope_type must be one of {ROPE_TYPES} or 'default' (got {kind!r})")
    factor, orig = d.get("factor"), d.get("original_max_position_embeddings")
    ok &= err.need(_is_num(factor) and 1.0 <= factor <= MAX_ROPE_FACTOR,
                   f"rope_scaling.factor must be a number in [1, {MAX_ROPE_FACTOR:g}] (got {factor!r})")
    ok &= err.need(orig is None or (_is_int(orig) and 1 <= orig <= MAX_POSITION),
                   f"rope_scaling.original_max_position_embeddings must be a positive integer (got {orig!r})")
    if not ok:
        return None
    out = {"rope_type": kind, "factor": float(factor)}
    if orig is not None:
        out["original_max_position_embeddings"] = int(orig)
    return out


@dataclass(frozen=True)
class ServedMeta:
    """hylorada.json, typed. `plain()` is the meta of a PEFT LoRA folder without one."""
    kind: str
    format_version: int = FORMAT_VERSION
    base: BaseRef | None = None
    position_bias: Buckets | None = None
    daa: Buckets | None = None
    landmarks: Landmarks | None = None
    rope_scaling: dict | None = None
    attention: Attention = field(default_factory=Attention)
    has_scale: bool = False
    norms: bool = False
    embeddings: bool = False
    source: dict | None = None

    @classmethod
    def plain(cls) -> "ServedMeta":
        return cls(kind="lora")

    @classmethod
    def parse(cls, d: dict, file: str | Path = "hylorada.json") -> "ServedMeta":
        """Validate every field of a hylorada.json object; one AdapterError lists every problem."""
        err = _Errors()
        fv = d.get("format_version")
        if not (_is_int(fv) and fv == FORMAT_VERSION):
            raise AdapterError(file, f"unknown format_version {fv!r} (this reader knows {FORMAT_VERSION}; "
                               "a newer hylorada wrote it — upgrade hylorada)")
        known = {f.name for f in dataclasses.fields(cls)}
        err.need(not (extra := sorted(set(d) - known)), f"unknown fields {extra}")
        kind = d.get("kind")
        err.need(kind in KINDS, f"kind must be one of {KINDS} (got {kind!r})")
        has_scale = d.get("has_scale", False)
        err.need(isinstance(has_scale, bool), f"has_scale must be true or false (got {has_scale!r})")
        norms = d.get("norms", False)
        err.need(isinstance(norms, bool), f"norms must be true or false (got {norms!r})")
        embeddings = d.get("embeddings", False)
        err.need(isinstance(embeddings, bool), f"embeddings must be true or false (got {embeddings!r})")
        source = d.get("source")
        err.need(source is None or isinstance(source, dict), "source must be an object or null")
        meta = cls(
            kind=kind, base=BaseRef.parse(err, _obj(err, d, "base", ("name", "architecture", "shape_hash"))),
            position_bias=Buckets.parse(err, "position_bias", _obj(err, d, "position_bias", ("num_buckets", "max_position"))),
            daa=Buckets.parse(err, "daa", _obj(err, d, "daa", ("num_buckets", "max_position"))),
            landmarks=Landmarks.parse(err, _obj(err, d, "landmarks", ("num_landmarks",))),
            rope_scaling=normalise_rope(err, d.get("rope_scaling")),
            attention=Attention.parse(err, _obj(err, d, "attention", ("mode", "sink_tokens", "window", "s2_group_size_ratio"))),
            has_scale=bool(has_scale), norms=bool(norms),
            embeddings=bool(embeddings), source=source)
        err.raise_if(file)
        return meta

    def to_json(self) -> dict:
        """The hylorada.json object (parse(to_json()) == self)."""
        d = dataclasses.asdict(self)
        return d

    def replace(self, **changes) -> "ServedMeta":
        return dataclasses.replace(self, **changes)

    @property
    def dynamic_parts(self) -> list[str]:
        """Names of the per-token/attention parts present (they cannot merge into W)."""
        parts = [k for k in ("position_bias", "daa", "landmarks") if getattr(self, k) is not None]
        parts += ["norms"] if self.norms else []
        parts += ["embeddings"] if self.embeddings else []
        return parts + ([f"attention={self.attention.mode}"] if self.attention.mode != "full" else [])

    @property
    def needs_dynamic_file(self) -> bool:
        return bool(self.position_bias or self.daa or self.landmarks or self.has_scale or self.norms
                    or self.embeddings)


def rope_setting(d) -> dict | None:
    """Normalise a RoPE dict outside a hylorada.json (engine flags, transformers configs); ValueError if bad."""
    err = _Errors()
    out = normalise_rope(err, d)
    if err.items:
        raise ValueError("; ".join(err.items))
    return out
