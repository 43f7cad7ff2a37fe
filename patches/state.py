"""One engine's HyLoRADA slot tables and the current step's per-token data.

vLLM keeps adapters in `max_loras` fixed slots (lora_a_stacked/lora_b_stacked [S, 1, ...]). Beside them:

    bias      [S+1, NB]   each slot's shared position-bias vector (row S: zeros = the base / no bias)
    w_pos     [M, S+1]    w_pos of every (layer, module slice) row m, per slot (zeros when absent)
    cfg       per slot (num_buckets, max_position) of its position bias, or None
    ranks     per slot rank (stacks are padded to max_lora_rank; matmuls use [:rank])
    landmarks per slot {layer: (keys [K, d], values [K, d], gate [])}

and, set by `begin_step` before a forward and cleared by `end_step` after it (nothing outlives it):

    groups    [(slot, tokens)] for every slot present in the step; tokens is a slice when the slot's
              tokens are contiguous, else a LongTensor of indices. Base tokens (vLLM index -1) are in
              no group, so they never receive a delta (vLLM 0.32's -1 -> last-slot wrap is masked here).
    big       the groups with >= min_group tokens (one matmul each in grouped_cpu)
    small_idx, small_slots   tokens of the other groups and their slots (one gathered einsum for all)
    slot_all  [T] slot per token with base tokens -> S (the identity row of every c stack)
    runs      [(slot, slice)] maximal runs of one adapter's tokens (requests are contiguous), base excluded;
              long_runs when they average >= 32 tokens (prefill-heavy steps)
    present   set of slots in the step
    P         [M, T] p(pos) per row per token = position_scale(bias[slot], w_pos[m, slot], bucket(pos)),
              0 for base tokens. Computed once per step for every layer.

The object is attached to the punica wrapper (`punica_wrapper.hylorada`) and the LoRA manager.
"""
from __future__ import annotations

import torch
from torch import Tensor

from hylorada.functional import position_bucket, position_scale


class HyState:
    def __init__(self, num_slots: int, grouped: bool, num_buckets: int = 64, min_group: int = 16, device="cpu"):
        S = num_slots
        self.num_slots = S
        self.device = torch.device(device)
        self.grouped = grouped
        self.min_group = min_group
        self.bias = torch.zeros(S + 1, num_buckets, device=self.device)
        self.w_pos = torch.zeros(0, S + 1, device=self.device)
        self.cfg: list[tuple[int, int] | None] = [None] * S
        self.ranks = [0] * S
        self.landmarks: list[dict[int, tuple[Tensor, Tensor, Tensor]]] = [{} for _ in range(S)]
        self.end_step()

    # --- tables (written when an adapter enters a slot) ---------------------------------
    def add_rows(self, n: int) -> tuple[int, ...]:
        """Reserve n w_pos rows (one per module slice of a layer); returns their indices."""
        m = self.w_pos.shape[0]
        self.w_pos = torch.cat([self.w_pos, torch.zeros(n, self.num_slots + 1, device=self.device)])
        return tuple(range(m, m + n))

    def set_slot(self, index: int, served, rank: int) -> None:
        """Slot-level parts of the adapter now in slot `index` (served: a ServedAdapter or None)."""
        self.ranks[index] = rank
        self.bias[index] = 0
        self.cfg[index] = None
        self.landmarks[index] = {}
        if served is None:
            return
        pb = served.position_bias
        if pb is not None:
            nb = pb.shape[0]
            if nb > self.bias.shape[1]:
                self.bias = torch.cat([self.bias, torch.zeros(self.num_slots + 1, nb - self.bias.shape[1],
                                                              device=self.device)], 1)
            self.bias[index, :nb] = pb.float().to(self.device)
            spec = served.meta["position_bias"]
            self.cfg[index] = (int(spec.get("num_buckets", nb)), int(spec.get("max_position", 32768)))
        if served.meta.get("landmarks"):
            layers = {int(k.split(".")[1]) for k in served.dynamic if ".landmark." in k}
            self.landmarks[index] = {i: tuple(t.to(self.device) for t in served.landmark(i)) for i in sorted(layers)}

    # --- per step ----------------------------------------------------------------------
    def begin_step(self, positions: Tensor, token_slots: Tensor | None) -> None:
        """positions [T] (what RoPE uses), token_slots [<=T] vLLM slot per token (-1 = base)."""
        T = positions.shape[0]
        dev = positions.device
        idx = torch.full((T,), -1, dtype=torch.long, device=dev)
        if token_slots is not None:
            n = min(T, token_slots.shape[0])
            idx[:n] = token_slots[:n]
        active = idx >= 0
        present = torch.unique(idx[active]).tolist() if bool(active.any()) else []
        self.groups = [(s, _segment(idx, s)) for s in present]
        if not present:
            self.end_step()
            return
        self.present = set(present)
        slot = torch.where(active, idx, self.num_slots)
        self.slot_all = slot
        run_slots, run_lens = torch.unique_consecutive(slot, return_counts=True)
        ends = run_lens.cumsum(0).tolist()
        self.runs = [(s, slice(e - n, e)) for s, n, e in zip(run_slots.tolist(), run_lens.tolist(), ends)
                     if s != self.num_slots]
        self.long_runs = T >= 32 * len(self.runs)        # c on views per run beats one [T, width] gather
        self.big = [(s, g) for s, g in self.groups if _size(g) >= self.min_group]
        small = [s for s, g in self.groups if _size(g) < self.min_group]
        if small:
            self.small_idx = torch.isin(idx, torch.tensor(small, device=dev)).nonzero().squeeze(1)
            self.small_slots = idx[self.small_idx]
        else:
            self.small_idx = self.small_slots = None
        cfgs = {self.cfg[s] for s in present if self.cfg[s] is not None}
        if cfgs:
            bucket = torch.zeros(T, dtype=torch.long, device=dev)
            for cfg in cfgs:
                ids = torch.tensor([s for s in present if self.cfg[s] == cfg], device=dev)
                bucket = torch.where(torch.isin(slot, ids), position_bucket(positions, *cfg).to(dev), bucket)
            flat = slot * self.bias.shape[1] + bucket
            P = position_scale(self.bias.flatten(), self.w_pos[:, slot], flat)       # [M, T]
        else:
            P = torch.ones(self.w_pos.shape[0], T, device=dev)
        self.P = P * active

    def end_step(self) -> None:
        self.groups, self.big, self.present, self.runs, self.long_runs = [], [], set(), [], False
        self.P = self.slot_all = self.small_idx = self.small_slots = None


def _segment(idx: Tensor, s: int) -> slice | Tensor:
    """Token indices of slot s: a slice when contiguous (views, no gather), else a LongTensor."""
    ix = (idx == s).nonzero().squeeze(1)
    a, b = int(ix[0]), int(ix[-1]) + 1
    return slice(a, b) if b - a == ix.numel() else ix


def _size(g: slice | Tensor) -> int:
    return g.stop - g.start if isinstance(g, slice) else g.numel()
