"""HyLoRADAConfig: every knob of the method, validated once at construction.

Fields whose feature lands in a later module are accepted and validated here so a
config written today keeps meaning the same thing tomorrow.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ROPE_TYPES = (None, "linear", "dynamic", "yarn")
ATTENTION_MODES = ("full", "sink", "s2")


class ConfigError(ValueError):
    """One error that lists every invalid field (like vLLM's PEFTHelper)."""

    def __init__(self, problems: list[str], what: str = "HyLoRADAConfig"):
        self.problems = problems
        super().__init__(f"invalid {what}:\n  - " + "\n  - ".join(problems))


@dataclass
class HyLoRADAConfig:
    # --- LoRA core -------------------------------------------------------------
    lora_rank: int = 8                 # r: rank of A [r, d_in] and B [d_out, r]
    lora_alpha: float = 16.0           # alpha: scale s = alpha/sqrt(r) (rsLoRA) or alpha/r
    lora_dropout: float = 0.0          # dropout on the LoRA input only (training)
    use_rslora: bool = True            # s = alpha/sqrt(r) when True, alpha/r when False
    target_modules: tuple[str, ...] = LLAMA_PROJECTIONS  # projection names to adapt
    # --- DoRA magnitude + blend ------------------------------------------------
    use_dora_magnitude: bool = True    # learn m [d_out]; False freezes the DoRA side at m = m_init
    magnitude_gate_init: float = 0.0   # g = sigmoid(magnitude_gate); m_eff = g*m + (1-g)*m_init
    residual_weight_init: float = 0.0  # beta = sigmoid(residual_weight); y = (1-beta)*DoRA + beta*LoRA
    # --- position bias (per-token scale of the LoRA delta) ---------------------
    position_bias_enabled: bool = True
    num_position_buckets: int = 64     # log buckets of absolute position, one vector per model
    bucket_max_position: int = 32768   # position mapped to the last bucket (see functional.position_bucket)
    position_scale_init: float = 0.0   # w_pos per layer; p(pos) = 1 + sigmoid(w_pos)*tanh(bias[bucket(pos)])
    # --- attention-score and memory extensions ---------------------------------
    daa_enabled: bool = False          # PositionalDAA: per-head scale + relative-position bucket bias
    landmark_enabled: bool = False     # LandmarkLoRA: K learnable memory slots per layer
    num_landmarks: int = 8             # K
    # --- long-context training -------------------------------------------------
    s2_attn_enabled: bool = False      # LongLoRA shifted sparse attention (training forwards only)
    s2_group_size_ratio: float = 0.25  # group size = ratio * sequence length
    s2_sink_tokens: int = 0            # first N tokens visible to every group (and the sink mode)
    attention_mode: str = "full"       # served attention: full | sink (sinks + window) | s2
    sink_window: int = 1024            # W recent tokens kept by the `sink` mode
    train_embeddings: bool = False     # LongLoRA: unfreeze the input embeddings (tied bases: shared with lm_head)
    train_norms: bool = False          # LongLoRA: unfreeze RMSNorm weights
    # --- RoPE scaling (written into the base config before construction) -------
    rope_scaling_type: str | None = None   # None | linear | dynamic | yarn
    rope_scaling_factor: float = 1.0
    rope_original_max_position: int | None = None  # defaults to the base's max_position_embeddings
    seed: int = 0                      # seeds A's orthogonal init

    def __post_init__(self):
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        self.target_modules = tuple(self.target_modules)
        problems = self.problems()
        if problems:
            raise ConfigError(problems)

    def problems(self) -> list[str]:
        p: list[str] = []

        def need(ok: bool, msg: str):
            if not ok:
                p.append(msg)

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(is_int(self.lora_rank) and self.lora_rank >= 1, f"lora_rank must be an integer >= 1 (got {self.lora_rank!r})")
        need(is_num(self.lora_alpha) and self.lora_alpha > 0, f"lora_alpha must be a finite number > 0 (got {self.lora_alpha!r})")
        need(is_num(self.lora_dropout) and 0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1) (got {self.lora_dropout!r})")
        for name in ("use_rslora", "use_dora_magnitude", "position_bias_enabled", "daa_enabled",
                     "landmark_enabled", "s2_attn_enabled", "train_embeddings", "train_norms"):
            v = getattr(self, name)
            need(isinstance(v, bool), f"{name} must be true or false (got {v!r})")
        for name in ("magnitude_gate_init", "residual_weight_init", "position_scale_init"):
            v = getattr(self, name)
            need(is_num(v), f"{name} must be a finite number (got {v!r})")
        need(len(self.target_modules) > 0 and all(isinstance(t, str) and t for t in self.target_modules),
             f"target_modules must be a non-empty list of module names (got {list(self.target_modules)!r})")
        need(len(set(self.target_modules)) == len(self.target_modules),
             f"target_modules has duplicates: {list(self.target_modules)!r}")
        need(is_int(self.num_position_buckets) and self.num_position_buckets >= 4 and self.num_position_buckets % 2 == 0,
             f"num_position_buckets must be an even integer >= 4 (got {self.num_position_buckets!r})")
        if is_int(self.num_position_buckets):
            need(is_int(self.bucket_max_position) and self.bucket_max_position > self.num_position_buckets,
                 f"bucket_max_position must be an integer > num_position_buckets (got {self.bucket_max_position!r})")
        need(is_int(self.num_landmarks) and self.num_landmarks >= 1, f"num_landmarks must be an integer >= 1 (got {self.num_landmarks!r})")
        need(is_num(self.s2_group_size_ratio) and 0 < self.s2_group_size_ratio <= 1,
             f"s2_group_size_ratio must be in (0, 1] (got {self.s2_group_size_ratio!r})")
        need(is_int(self.s2_sink_tokens) and self.s2_sink_tokens >= 0, f"s2_sink_tokens must be an integer >= 0 (got {self.s2_sink_tokens!r})")
        need(self.attention_mode in ATTENTION_MODES, f"attention_mode must be one of {ATTENTION_MODES} (got {self.attention_mode!r})")
        need(is_int(self.sink_window) and self.sink_window >= 1, f"sink_window must be an integer >= 1 (got {self.sink_window!r})")
        if self.attention_mode == "sink":
            need(is_int(self.s2_sink_tokens) and self.s2_sink_tokens >= 1, "attention_mode 'sink' needs s2_sink_tokens >= 1")
        need(self.rope_scaling_type in ROPE_TYPES, f"rope_scaling_type must be one of {ROPE_TYPES} (got {self.rope_scaling_type!r})")
        need(is_num(self.rope_scaling_factor) and self.rope_scaling_factor >= 1,
             f"rope_scaling_factor must be a number >= 1 (got {self.rope_scaling_factor!r})")
        if self.rope_scaling_type is None and is_num(self.rope_scaling_factor):
            need(self.rope_scaling_factor == 1, "rope_scaling_factor != 1 needs rope_scaling_type (linear, dynamic or yarn)")
        need(self.rope_original_max_position is None or (is_int(self.rope_original_max_position) and self.rope_original_max_position > 0),
             f"rope_original_max_position must be a positive integer or null (got {self.rope_original_max_position!r})")
        need(is_int(self.seed), f"seed must be an integer (got {self.seed!r})")
        return p

    # --- derived ---------------------------------------------------------------
    @property
    def scaling(self) -> float:
        """s = alpha/sqrt(r) (rsLoRA) or alpha/r."""
        from .functional import lora_scaling
        return lora_scaling(self.lora_alpha, self.lora_rank, self.use_rslora)

    # --- JSON round trip -------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HyLoRADAConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError([f"unknown field {k!r}" for k in unknown])
        return cls(**d)

    def to_json(self, path: str | Path | None = None) -> str:
        s = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(s + "\n")
        return s

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "HyLoRADAConfig":
        p = Path(text_or_path)
        text = p.read_text() if (isinstance(text_or_path, Path) or not str(text_or_path).lstrip().startswith("{")) else str(text_or_path)
        return cls.from_dict(json.loads(text))


__all__ = ["HyLoRADAConfig", "ConfigError", "LLAMA_PROJECTIONS", "field"]
