"""`ServedAdapter`: one validated served adapter in memory (format.load builds it; nothing else should).

Shapes: A [r, d_in], B' [d_out, r], c [d_out], w_pos [], position_bias [nb],
daa head_scale [H], bucket_bias [H, nb], landmark keys/values [K, hidden], gate [],
trained norm weights [hidden], trained embedding rows: ids [k] int64 (increasing), rows [k, hidden].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from .layout import EMBED_IDS, EMBED_ROWS, LORA_KEY, lora_key, module_name
from .meta import ServedMeta


@dataclass
class ServedAdapter:
    """`lora` holds PEFT keys with B' = s*B (scale 1), `dynamic` the side file, `meta` the typed hylorada.json."""
    path: Path
    meta: ServedMeta
    peft_config: dict
    lora: dict[str, Tensor]
    dynamic: dict[str, Tensor] = field(default_factory=dict)
    rank: int = 0
    target_modules: list[str] = field(default_factory=list)
    _modules: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def kind(self) -> str:
        return self.meta.kind

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

    def norm(self, name: str) -> Tensor | None:
        """The trained weight of RMSNorm `name` ('layers.{i}.input_layernorm', '...post_attention_layernorm',
        'norm'), or None where the adapter keeps the base's."""
        return self.dynamic.get(f"{name}.weight")

    @property
    def embedding_rows(self) -> tuple[Tensor, Tensor] | None:
        """(ids [k] int64 increasing, rows [k, hidden]): the input-embedding rows training changed, or None."""
        ids = self.dynamic.get(EMBED_IDS)
        return None if ids is None else (ids, self.dynamic[EMBED_ROWS])

    def daa(self, i: int) -> tuple[Tensor, Tensor] | None:
        h = self.dynamic.get(f"layers.{i}.daa.head_scale")
        return None if h is None else (h, self.dynamic[f"layers.{i}.daa.bucket_bias"])

    @property
    def dynamic_parts(self) -> list[str]:
        """Names of the per-token/attention parts present (they cannot merge into W)."""
        return self.meta.dynamic_parts

    @property
    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.lora.values(), *self.dynamic.values()])

    def modules(self) -> list[tuple[int, str]]:
        """(layer, qualified module) of every adapted linear, sorted (a fresh list; matched again only when the
        names in `lora` changed — the checks ask for it several times per load)."""
        keys = tuple(self.lora)
        if self._modules is None or self._modules[0] != keys:
            self._modules = (keys, sorted((int(m.group(1)), m.group(2)) for k in keys
                                          if (m := LORA_KEY.match(k)) and m.group(3) == "A"))
        return list(self._modules[1])
