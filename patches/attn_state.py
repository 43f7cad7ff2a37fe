"""Per-slot attention variants and the current step's per-request plan (no vLLM imports).

Tables, one row per vLLM LoRA slot plus row S for sequences without an adapter:

    specs[s]  ModeSpec: the attention mode of the adapter in slot s (hylorada.json "attention"),
              or the server-wide default (HYLORADA_ATTENTION) when the adapter asks for "full"
    daa[s]    {layer: (head_scale [H], bucket_bias [H, nb], max_position)} of its PositionalDAA

Written through state.EngineState when vLLM activates an adapter in a slot (beside the LoRA half's tables);
an evicted slot is never referenced, and the next activation rewrites its row.

Per step (from the model runner's InputBatch, planned when the forward starts and cleared after it; engine.py):

    req_slots   [R] slot of each request in the step, in attention-metadata order (S: no adapter)
    prompt_lens [R] prompt length of each request (S² groups are sized from it)

`rows(layer)` lists the requests whose attention at `layer` is not plain causal — only those
take the reference path (attn_compute); every other request keeps vLLM's kernel.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from .env import ATTENTION, Settings

MODES = ("full", "sink", "s2")


@dataclass(frozen=True)
class ModeSpec:
    mode: str = "full"          # full | sink | s2
    sink_tokens: int = 0        # first N tokens always visible (sink mode; S² sinks)
    window: int = 0             # sink mode: q_pos - k_pos < window
    s2_ratio: float = 0.25      # s2: G = round(ratio * prompt_len) during prefill

    @classmethod
    def from_meta(cls, att: dict | None) -> "ModeSpec":
        """From hylorada.json's "attention" dict; raises ValueError naming what is wrong."""
        att = att or {}
        mode = att.get("mode", "full")
        if mode not in MODES:
            raise ValueError(f"attention mode {mode!r} is not one of {MODES}")
        spec = cls(mode, int(att.get("sink_tokens", 0) or 0), int(att.get("window", 0) or 0),
                   float(att.get("s2_group_size_ratio", 0.25) or 0.25))
        if mode == "sink" and (spec.sink_tokens < 1 or spec.window < 1):
            raise ValueError(f"attention mode 'sink' needs sink_tokens >= 1 and window >= 1 (got {att})")
        if mode == "s2" and not 0 < spec.s2_ratio <= 1:
            raise ValueError(f"attention mode 's2' needs 0 < s2_group_size_ratio <= 1 (got {att})")
        return spec


def server_default(env: Mapping[str, str] | None = None) -> ModeSpec:
    """The server-wide mode from HYLORADA_ATTENTION (env.py; `env` default os.environ), a JSON object with
    hylorada.json's attention keys, e.g. '{"mode": "sink", "sink_tokens": 4, "window": 1024}'. Unset: full."""
    raw = Settings.read(env).attention
    if not raw:
        return ModeSpec()
    try:
        return ModeSpec.from_meta(json.loads(raw))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{ATTENTION}={raw!r}: {e}") from None


def daa_layers(served) -> dict[int, tuple[Tensor, Tensor, int]]:
    """{layer: (head_scale, bucket_bias, max_position)} of a ServedAdapter (empty without DAA)."""
    if served is None or served.meta.daa is None:
        return {}
    max_pos = served.meta.daa.max_position
    layers = sorted({int(k.split(".")[1]) for k in served.dynamic if k.endswith(".daa.head_scale")})
    return {i: (served.daa(i)[0].float(), served.daa(i)[1].float(), max_pos) for i in layers}


class AttnState:
    def __init__(self, num_slots: int, default: ModeSpec | None = None):
        self.num_slots = num_slots
        self.default = default or ModeSpec()
        self.specs = [self.default] * (num_slots + 1)
        self.daa: list[dict] = [{} for _ in range(num_slots + 1)]
        self.req_slots: Tensor | None = None
        self.prompt_lens: Tensor | None = None
        self._rows: dict[int, list[int]] = {}
        self.scratch: dict = {}                 # per-step values shared by the layers (attn_backend); cleared

    def set_slot(self, index: int, served) -> None:
        """Tables of slot `index` from its ServedAdapter (None: a plain vLLM LoRA -> the default)."""
        spec = ModeSpec.from_meta(served.meta.attention.to_json() if served is not None else None)
        self.specs[index] = spec if spec.mode != "full" else self.default
        self.daa[index] = daa_layers(served)

    @property
    def any_variant(self) -> bool:
        return any(s.mode != "full" for s in self.specs) or any(self.daa)

    # --- per step ----------------------------------------------------------------------
    def begin_step(self, req_lora_ids, prompt_lens, index_to_id: list) -> None:
        """req_lora_ids / prompt_lens: per request (numpy or list); index_to_id: vLLM's slot -> lora id."""
        self._rows, self.scratch = {}, {}
        if not self.any_variant:
            self.req_slots = None
            return
        where = {lid: i for i, lid in enumerate(index_to_id) if lid is not None}
        self.req_slots = torch.tensor([where.get(int(x), self.num_slots) if int(x) > 0 else self.num_slots
                                       for x in req_lora_ids], dtype=torch.long)
        self.prompt_lens = torch.as_tensor(prompt_lens, dtype=torch.long).clone()

    def end_step(self) -> None:
        self.req_slots, self.prompt_lens, self._rows, self.scratch = None, None, {}, {}

    def rows(self, layer: int) -> list[int]:
        """Requests (indices into this step's batch) whose attention at `layer` is a variant."""
        if self.req_slots is None:
            return []
        got = self._rows.get(layer)
        if got is None:
            got = [r for r, s in enumerate(self.req_slots.tolist())
                   if self.specs[s].mode != "full" or layer in self.daa[s]]
            self._rows[layer] = got
        return got

    def request(self, r: int, layer: int) -> tuple[ModeSpec, tuple | None, int]:
        """(mode spec, DAA (head_scale, bucket_bias, max_position) or None, prompt length) of request r."""
        s = int(self.req_slots[r])
        return self.specs[s], self.daa[s].get(layer), int(self.prompt_lens[r])
