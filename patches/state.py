"""One engine's HyLoRADA slot tables and the current step's per-token data.

vLLM keeps adapters in `max_loras` fixed slots (lora_a_stacked/lora_b_stacked [S, 1, ...]). Beside them:

    tables    static_path.StaticTables: the fixed-capacity tensors (allocated once, written in place), of which
    bias      [S+1, NB]   each slot's shared position-bias vector (row S: zeros = the base / no bias; NB fixed at
                          start-up, static_path.MAX_BUCKETS: a wider adapter is refused, never a reallocation)
    w_pos     [M, S+1]    w_pos of every (layer, module slice) row m, per slot (zeros when absent)
    cfg       per slot (num_buckets, max_position) of its position bias, or None
    ranks     per slot rank (stacks are padded to max_lora_rank; matmuls use [:rank])
    landmarks per slot {layer: (keys [K, d], values [K, d], gate [])}

and, set by `begin_step` before a forward and cleared by `end_step` after it (nothing outlives it):

    groups    [(slot, tokens)] for every slot present in the step; tokens is a slice when the slot's
              tokens are contiguous, else a LongTensor of indices. Base tokens (vLLM index -1) are in
              no group, so they never receive a delta (vLLM 0.32's -1 -> last-slot wrap is masked here).
    big       the groups with >= min_group tokens (one matmul each in grouped_cpu)
    pad       SmallPlan: the tokens of the other groups laid out [G, Tmax] by slot, for one batched
              matmul per slice (grouped_cpu: decode steps, a few tokens per adapter), or None; the slots in
              the order of `rows` (RowMap, kept across steps), so that each layer's batch stacks
              (stacks.SliceStack) rewrite only the rows whose adapter changed
    slot_all  [T] slot per token with base tokens -> S (the identity row of every c stack)
    runs      [(slot, slice)] maximal runs of one adapter's tokens (requests are contiguous), base excluded;
              long_runs when they average >= 32 tokens (prefill-heavy steps)
    present   set of slots in the step
    P         [M, T] p(pos) per row per token = position_scale(bias[slot], w_pos[m, slot], bucket(pos)),
              0 for base tokens. Computed once per step for every layer.
    step      the static path's per-step values (static_path.Step) after the path's own `begin_step` wrote the
              mapping into `tables` (lora_path.StaticPath); None on the other paths

and `path`, the engine's LoRA path (lora_path.py: picked once, re-picked by `use_path`).

HyState is attached to every punica wrapper (`punica_wrapper.hylorada`, where the layers read it). `EngineState`
(below) is the engine's whole state, on the LoRA manager as `.hylorada`: this LoRA half and the attention half
(attn_state.AttnState), written together when an adapter enters a slot and planned together once per step.
"""
from __future__ import annotations

import torch
from torch import Tensor

from hylorada.functional import position_bucket, position_scale

from .lora_path import pick
from .static_path import MAX_BUCKETS, StaticTables


class HyState:
    def __init__(self, num_slots: int, path: str = "grouped", num_buckets: int = MAX_BUCKETS, min_group: int = 16,
                 device="cpu", max_tokens: int = 8192):
        S = num_slots
        self.num_slots = S
        self.device = torch.device(device)
        self.tables = StaticTables.allocate(S, max_tokens, num_buckets, self.device)
        self.use_path(path)
        self.min_group = min_group
        self.cfg: list[tuple[int, int] | None] = [None] * S
        self.ranks = [0] * S
        self.landmarks: list[dict[int, tuple[Tensor, Tensor, Tensor]]] = [{} for _ in range(S)]
        self.rows = RowMap()
        self.end_step()

    def use_path(self, name: str) -> None:
        """Pick the LoRA path every layer of this engine calls from now on (ValueError for an unknown name)."""
        self.path = pick(name)

    # --- tables (written when an adapter enters a slot) ---------------------------------
    @property
    def bias(self) -> Tensor:
        return self.tables.bias

    @property
    def w_pos(self) -> Tensor:
        return self.tables.w_pos

    def add_rows(self, n: int) -> tuple[int, ...]:
        """Reserve n w_pos rows (one per module slice of a layer, at start-up); returns their indices."""
        return self.tables.add_rows(n)

    def set_slot(self, index: int, served, rank: int) -> None:
        """Slot-level parts of the adapter now in slot `index` (served: a ServedAdapter or None)."""
        self.ranks[index] = rank
        self.tables.clear_slot(index)
        self.cfg[index] = None
        self.landmarks[index] = {}
        if served is None:
            return
        pb = served.position_bias
        if pb is not None:
            spec = served.meta.position_bias
            self.tables.write_slot(index, pb.float(), spec.num_buckets, spec.max_position)
            self.cfg[index] = (spec.num_buckets, spec.max_position)
        if served.meta.landmarks is not None:
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
        step = self.path.begin_step(self.tables, positions, idx)
        active = idx >= 0
        present = torch.unique(idx[active]).tolist() if bool(active.any()) else []
        self.groups = [(s, _segment(idx, s)) for s in present]
        if not present:
            self.end_step()
            self.step = step
            return
        self.step = step
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
        self.pad = SmallPlan.build(idx, self.rows.assign(small), self.P) if small else None

    def end_step(self) -> None:
        self.groups, self.big, self.present, self.runs, self.long_runs = [], [], set(), [], False
        self.P = self.slot_all = self.pad = self.step = None


class EngineState:
    """One engine's HyLoRADA state: `lora` (HyState), `attn` (AttnState; None where the attention variants are
    not served, attention.variants_supported), `rope` (rope.RopeTables: each slot's RoPE table and the step's
    rotary positions), `norms` (norms.NormTables: trained RMSNorm weights per slot) and `embeds`
    (embeddings.EmbedTables: trained embedding rows per slot; the last three None in tests without a model), fed by
    engine.py in this order:

        set_slot(index, served, rank)       an adapter entered slot `index` (after vLLM's activate_adapter): its
                                            tables, attention mode and RoPE table
        set_requests(lora_ids, prompt_lens, index_to_id)
                                            the coming step's requests, in attention-metadata order (the model
                                            runner's set_active_loras, just before the forward)
        begin_step(positions, token_slots)  the model's forward starts: both halves plan the step
        end_step()                          the forward ended: both plans cleared (nothing outlives the step)

    A forward without `set_requests` before it (vLLM's dummy and profile runs) plans no attention variant."""

    def __init__(self, lora: HyState, attn=None, rope=None, norms=None, embeds=None):
        self.lora, self.attn, self.rope, self.norms, self.embeds = lora, attn, rope, norms, embeds
        self._requests: tuple | None = None

    def set_slot(self, index: int, served, rank: int) -> None:
        self.lora.set_slot(index, served, rank)
        if self.attn is not None:
            self.attn.set_slot(index, served)
        if self.rope is not None:
            self.rope.set_slot(index, served)
        if self.norms is not None:
            self.norms.set_slot(index, served)
        if self.embeds is not None:
            self.embeds.set_slot(index, served)

    def set_requests(self, lora_ids, prompt_lens, index_to_id: list) -> None:
        self._requests = (lora_ids, prompt_lens, index_to_id)

    def begin_step(self, positions: Tensor, token_slots: Tensor | None) -> None:
        requests, self._requests = self._requests, None
        if self.attn is not None and requests is not None:
            self.attn.begin_step(*requests)
        self.lora.begin_step(positions, token_slots)
        if self.rope is not None:
            self.rope.begin_step(positions, self.lora.slot_all)
        if self.norms is not None:
            self.norms.begin_step(self.lora.slot_all)

    def end_step(self) -> None:
        self.lora.end_step()
        if self.attn is not None:
            self.attn.end_step()
        if self.rope is not None:
            self.rope.end_step()
        if self.norms is not None:
            self.norms.end_step()


class SmallPlan:
    """The tokens of small groups laid out slot by slot, padded to the largest group:

        slots  [G]        the small groups' slots in row order (RowMap.assign; slot_list: the same as
                          ints, for the layers' stacks.SliceStack)
        idx    [G*Tmax]   token index at each padded position (padding repeats a real token)
        P      [M, G*Tmax] p(pos) per row at each padded position, 0 on padding
        pad    [G, Tmax, 1] True on padding positions
        inv    [T]        each token's padded position; tokens not in a small group (base, big groups) point
                          at a padding row, which small_delta_ zeroes with masked_fill after the shrink
                          (a select, not P = 0: the repeated token may hold inf, and inf * 0 = NaN)

    so that, per slice, the delta of every small token is gathered back with one `index_select` from
    bmm(bmm(x[idx] viewed [G, Tmax, d_in], A[slots]^T) * P, B[slots]^T) — one matmul pair for all adapters,
    each token against its own adapter only. A padding row is added when every padded position is taken
    and some token is outside the small groups."""

    def __init__(self, slots: Tensor, idx: Tensor, P: Tensor, inv: Tensor, G: int, Tmax: int, pad: Tensor,
                 slot_list: list[int]):
        self.slots, self.idx, self.P, self.inv, self.pad = slots, idx, P, inv, pad
        self.slot_list = slot_list
        self.G, self.Tmax = G, Tmax

    @classmethod
    def build(cls, idx: Tensor, small: list[int], P: Tensor) -> "SmallPlan":
        """small: the small groups' slots, in the row order the plan lays them out (group g = small[g])."""
        dev = idx.device
        T = idx.shape[0]
        slots = torch.tensor(small, device=dev)                      # only the present slots: no empty rows
        group_of = torch.full((max(small) + 1,), -1, dtype=torch.long, device=dev)
        group_of[slots] = torch.arange(len(small), device=dev)
        tok = torch.isin(idx, slots).nonzero().squeeze(1)
        group = group_of[idx[tok]]
        order = torch.argsort(group, stable=True)
        tok, group = tok[order], group[order]                            # [n] small tokens by group, group of each
        counts = torch.bincount(group, minlength=slots.numel())
        G, n = slots.numel(), tok.numel()
        Tmax = int(counts.max())
        if G * Tmax == n and n < T:                                      # outsiders need a zero row
            Tmax += 1
        at = group * Tmax + (torch.arange(n, device=dev) - (counts.cumsum(0) - counts)[group])
        pidx = torch.full((G * Tmax,), int(tok[0]), dtype=torch.long, device=dev)
        pidx[at] = tok
        valid = torch.zeros(G * Tmax, dtype=P.dtype, device=dev)
        valid[at] = 1
        inv = torch.full((T,), int((valid == 0).nonzero()[0]) if n < T else 0, dtype=torch.long, device=dev)
        inv[tok] = at
        return cls(slots, pidx, P[:, pidx] * valid, inv, G, Tmax, (valid == 0).view(G, Tmax, 1), list(small))


class RowMap:
    """Which slot each row of the layers' batch stacks (stacks.SliceStack) holds, kept across steps.

    assign(slots) -> the step's slots in row order, rows 0..G-1 exactly the G slots of the step: a slot already in
    a row keeps it when that row is < G; a slot left behind in a row >= G moves into a free row below G; slots new to
    the stacks fill the remaining free rows (ascending). Under continuous batching a step changes a row per request
    that joins or leaves, so the stacks copy those adapters' weights, not all G every step."""

    def __init__(self):
        self.rows: list[int | None] = []

    def assign(self, slots: list[int]) -> list[int]:
        want, G = set(slots), len(slots)
        rows = [s if s in want else None for s in self.rows] + [None] * max(0, G - len(self.rows))
        placed = {s: r for r, s in enumerate(rows) if s is not None}
        free = [r for r in range(G) if rows[r] is None]
        for s in sorted(s for s, r in placed.items() if r >= G):       # left behind above G: move down
            rows[placed[s]] = None
            rows[free.pop(0)] = s
        for s in sorted(want - placed.keys()):
            rows[free.pop(0)] = s
        self.rows = rows[:G]
        return list(self.rows)


def _segment(idx: Tensor, s: int) -> slice | Tensor:
    """Token indices of slot s: a slice when contiguous (views, no gather), else a LongTensor."""
    ix = (idx == s).nonzero().squeeze(1)
    a, b = int(ix[0]), int(ix[-1]) + 1
    return slice(a, b) if b - a == ix.numel() else ix


def _size(g: slice | Tensor) -> int:
    return g.stop - g.start if isinstance(g, slice) else g.numel()
