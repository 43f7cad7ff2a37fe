"""HyLoRADA-aware subclasses of vLLM's linear LoRA layers (vllm/lora/layers/*), swapped into
`vllm.lora.utils._all_lora_classes` (read by `from_layer` at call time).

Per token t in slot s (DESIGN.md §3):   out[t] = c[s] ⊙ (base(x[t]) + p_i(pos_t) · B_i[s] A_i[s] x[t]) + bias

  - base(x) without the bias: the quant method's own GEMM (`_get_quant_method().apply(base, x, None)`),
  - the LoRA delta and c: the engine's LoRA path (lora_path.py, picked once per engine: grouped_cpu, vLLM's
    punica ops with the rank-r buffer scaled by p, or static_path's fixed-capacity tables), called without a branch,
  - the weights: `hy_views[i][s]` = (A_i, B_i) of slot s, references to the tensors of the engine's cached
    LoRAModel (vLLM's CPU cache) — a slot copies nothing, so --max-loras can be hundreds (issue 18). vLLM's
    [S, 1, R, d] slot stacks (lora_a_stacked/lora_b_stacked) exist only while the engine's path reads them
    (the vllm and static paths, lora_path.needs_copies; `hy_use_copies` fills them from the views on a switch);
    otherwise they are 1-slot placeholders that keep vLLM's shape and dtype reads working,
  - c: a [S+1, width] stack (row S and unused slots = ones),
    written by `hy_set` right after vLLM's `set_lora` (engine.write_slot) and cleared in `reset_lora`,
  - base tokens (vLLM index -1) are in no group of HyState: no delta, c = 1 (masks the -1 wrap bug),
  - plain LoRA adapters: c = 1 and p = 1 (no position bias), i.e. vLLM's own LoRA.

Tensor parallel (DESIGN.md §5; tests/patches/test_layers.py checks both rules on 2 simulated shards):
  column-parallel kinds: c is sliced exactly like B's output rows (the layer's own `slice_lora_b`):
      rank k holds rows R_k of W, B, c:  y[:, R_k] = c[R_k] ⊙ (x W[R_k]^T + p · (x A^T) B[R_k]^T) + b[R_k]
  row-parallel: B and c keep the full output; c and the bias are applied after the all-reduce:
      partial_k = x[:, C_k] W[:, C_k]^T + p · (x[:, C_k] A[:, C_k]^T) B^T,   y = c ⊙ Σ_k partial_k + b
The fully-sharded LoRA variants are not wrapped (refused in engine.build_state).
"""
from __future__ import annotations

import re

import torch

from .stacks import SliceStack
from .wrap import patch

WRAPPED = ("ColumnParallelLinearWithLoRA", "MergedColumnParallelLinearWithLoRA", "QKVParallelLinearWithLoRA",
           "MergedQKVParallelLinearWithLoRA", "RowParallelLinearWithLoRA", "ReplicatedLinearWithLoRA",
           "MergedColumnParallelLinearVariableSliceWithLoRA")


class HyLoRADALinearMixin:
    """Mixed in before a vLLM BaseLinearLayerWithLoRA subclass."""
    hy_after_reduce = False          # row-parallel: c (and bias) after the all-reduce, in forward()

    def create_lora_weights(self, max_loras, lora_config, model_config=None):
        from vllm.platforms import current_platform

        from .lora_path import default_path, needs_copies
        self.hy_num_slots, self.hy_model_config = max_loras, model_config
        self.hy_copies = needs_copies(default_path(current_platform.is_cpu()))
        # vLLM's slot stacks only for the paths that read them; else 1-slot placeholders (shapes and dtype)
        super().create_lora_weights(max_loras if self.hy_copies else 1, lora_config, model_config)
        # views[i][s]: (A [r, d_in], B [n_i, r]) of slot s, the cached LoRA tensors themselves (no copy), or None
        self.hy_views = tuple([None] * max_loras for _ in range(self.n_slices))
        self.hy_stacks = tuple(SliceStack() for _ in range(self.n_slices))   # the decode batches' weights (stacks.py)
        self.hy_c = torch.ones(max_loras + 1, sum(self.output_slices), dtype=lora_config.lora_dtype, device=self.device)
        self.hy_c_slots: set[int] = set()
        self.hy_rows: tuple[int, ...] = ()
        self.hy_layer, self.hy_subs = -1, ()

    def hy_use_copies(self, on: bool) -> None:
        """Keep vLLM's [S, 1, ...] slot stacks (the vllm / static paths read them) or drop them to 1-slot
        placeholders (the grouped path reads the views). Turning them on fills them from the views — what vLLM's
        set_lora would have copied, since the views are its per-slice, tensor-parallel-sliced inputs."""
        if on == self.hy_copies:
            return
        self.hy_copies = on
        super().create_lora_weights(self.hy_num_slots if on else 1, self.lora_config, self.hy_model_config)
        if not on:
            return
        for i, pairs in enumerate(self.hy_views):
            for index, pair in enumerate(pairs):
                if pair is not None:
                    a, b = pair
                    self.lora_a_stacked[i][index, 0, :a.shape[0], :a.shape[1]].copy_(a)
                    self.lora_b_stacked[i][index, 0, :b.shape[0], :b.shape[1]].copy_(b)

    def hy_register(self, name: str, state, packed_modules_mapping: dict) -> None:
        """Name -> (layer index, qualified sub-modules per slice); reserve this layer's w_pos rows."""
        parts = name.split(".")
        m = re.search(r"layers\.(\d+)\.", name)
        self.hy_layer = int(m.group(1)) if m else -1
        subs = packed_modules_mapping.get(parts[-1], [parts[-1]])
        if len(subs) != self.n_slices:
            subs = [parts[-1]] * self.n_slices
        self.hy_subs = tuple(f"{parts[-2]}.{s}" for s in subs)
        self.hy_rows = state.add_rows(self.n_slices)

    def hy_per_slice(self, lora_a, lora_b) -> tuple[list, list]:
        """vLLM's set_lora inputs -> one (A_i, B_i) per slice, as vLLM 0.32's set_lora variants lay them out before
        copying (column_parallel_linear.py / base_linear.py): a single tensor is the one slice (VariableSlice: A
        shared, B split by output_sizes), packed groups are expanded, tensor-parallel slicing is the layer's own."""
        n = self.n_slices
        if n > 1 and isinstance(lora_a, torch.Tensor):                  # VariableSlice: one checkpoint tensor
            lora_a = [lora_a] * n
        if n > 1 and isinstance(lora_b, torch.Tensor):
            lora_b = list(torch.split(lora_b, list(self.base_layer.output_sizes), dim=0))
        if isinstance(lora_b, list) and len(lora_b) != n:
            lora_a, lora_b = self.expand_packed_lora(lora_a, lora_b)
        if self.tp_size > 1:
            lora_a, lora_b = self.slice_lora_a(lora_a), self.slice_lora_b(lora_b)
        if isinstance(lora_a, torch.Tensor):
            lora_a, lora_b = [lora_a], [lora_b]
        like = self.lora_a_stacked[0]
        return ([None if a is None else a.to(device=like.device, dtype=like.dtype) for a in lora_a],
                [None if b is None else b.to(device=like.device, dtype=like.dtype) for b in lora_b])

    def set_lora(self, index: int, lora_a, lora_b):
        if self.hy_copies:
            super().set_lora(index, lora_a, lora_b)                     # calls self.reset_lora(index) first
        else:
            self.reset_lora(index)
        for i, (a, b) in enumerate(zip(*self.hy_per_slice(lora_a, lora_b))):
            self.hy_views[i][index] = None if a is None or b is None else (a, b)

    def reset_lora(self, index: int):
        if self.hy_copies:
            super().reset_lora(index)
        for pairs in self.hy_views:
            pairs[index] = None
        self.hy_c[index] = 1
        self.hy_c_slots.discard(index)
        st = getattr(self.punica_wrapper, "hylorada", None) if hasattr(self, "punica_wrapper") else None
        if st is not None and self.hy_rows:
            st.w_pos[list(self.hy_rows), index] = 0

    def hy_set(self, index: int, served, state) -> None:
        """Write this adapter's c and w_pos for slot `index` (after vLLM's set_lora / reset_lora)."""
        if served is None:
            return
        for row, sub in zip(self.hy_rows, self.hy_subs):
            w = served.w_pos(self.hy_layer, sub)
            state.w_pos[row, index] = 0.0 if w is None else float(w)
        cs = [served.c(self.hy_layer, sub) for sub in self.hy_subs]
        if all(c is None for c in cs):
            return
        self.hy_c[index] = self.hy_local_c(cs).to(self.hy_c.dtype)
        self.hy_c_slots.add(index)

    def hy_local_c(self, cs: list) -> torch.Tensor:
        """Full-size c per slice (None = ones) -> this rank's [width], sliced like B's output rows."""
        if self.tp_size > 1:
            if self.n_slices == 1:
                cs = [None if cs[0] is None else self.slice_lora_b(cs[0].unsqueeze(1)).squeeze(1)]
            else:
                cs = [None if c is None else c.squeeze(1)
                      for c in self.slice_lora_b([None if c is None else c.unsqueeze(1) for c in cs])]
        return torch.cat([torch.ones(n) if c is None else c.float().cpu() for c, n in zip(cs, self.output_slices)])

    # --- forward ---------------------------------------------------------------------
    def apply(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        out = self._get_quant_method().apply(self.base_layer, x, None)
        shape = out.shape
        x2, o2 = x.reshape(-1, x.shape[-1]), out.reshape(-1, shape[-1])
        st = self.punica_wrapper.hylorada
        st.path.add_lora_(self, o2, x2, st)
        if not self.hy_after_reduce:
            st.path.scale_c_(self, o2, st)
        out = o2.view(shape)
        return out if bias is None else out + bias


class HyLoRADARowParallelMixin(HyLoRADALinearMixin):
    """Row-parallel: y = c ⊙ all_reduce(Σ_ranks partial) + bias (vLLM adds the bias on rank 0 before
    the reduce; with c it must come after, and so must c itself per DESIGN.md §5)."""
    hy_after_reduce = True

    def forward(self, input_):
        from vllm.distributed import split_tensor_along_last_dim, tensor_model_parallel_all_reduce
        bl = self.base_layer
        xp = input_ if bl.input_is_parallel else \
            split_tensor_along_last_dim(input_, num_partitions=self.tp_size)[self.tp_rank].contiguous()
        out = self.apply(xp, None)
        reduced = bl.reduce_results or self.tp_size == 1
        if bl.reduce_results and self.tp_size > 1:
            out = tensor_model_parallel_all_reduce(out)
        st = self.punica_wrapper.hylorada
        o2 = out.reshape(-1, out.shape[-1])                             # c is linear: per partial is exact too
        st.path.scale_c_(self, o2, st)
        out = o2.view(out.shape)
        if bl.bias is not None and not bl.skip_bias_add and (reduced or self.tp_rank == 0):
            out = out + bl.bias
        if not bl.return_bias:
            return out
        return out, (bl.bias if bl.skip_bias_add else None)


def hylorada_classes() -> dict[type, type]:
    """vLLM layer class -> its HyLoRADA subclass, for the classes in WRAPPED."""
    import vllm.lora.layers as L
    out = {}
    for name in WRAPPED:
        base = getattr(L, name, None)
        if base is None:
            continue
        mixin = HyLoRADARowParallelMixin if "RowParallel" in name else HyLoRADALinearMixin
        out[base] = type("HyLoRADA" + name, (mixin, base), {"__doc__": f"HyLoRADA-aware {name}."})
    return out


def install() -> None:
    """Swap our subclasses into vllm.lora.utils._all_lora_classes (same order), once."""
    import vllm.lora.utils as U

    def swap(classes):
        mapping = hylorada_classes()
        return tuple(mapping.get(c, c) for c in classes)
    patch(U, "_all_lora_classes", f"{__name__}.install", swap)
