"""The served-form reference: the slow, obviously-correct twin every serving path is tested against.

    ref = ServedReference(base_dir, dtype=torch.float32)
    ref.logits(input_ids [B, T], adapters: list[ServedAdapter | None], attention_mask=None) -> [B, T, V]
    ref.greedy(prompts, adapters, max_new_tokens, top_logprobs=5) -> [(token ids, [{id: logprob}] per step)]

Pure torch + transformers. During a call, every adapted nn.Linear of the base is temporarily
replaced by a `_ServedLinear` that loops over the batch rows:

    for b in range(B):  y[b] = served_linear(x[b], W, bias, A_b, B'_b, c_b, p_b(pos[b]))   (or W x[b] + bias)

with p_b(pos) = position_scale(position_bias_b, w_pos_b, bucket(pos)) and pos the position_ids
RoPE uses (cumsum(mask) - 1: left padding puts 0 at the first real token). Landmarks add
landmark_readout(h, K, V, gate) to each MLP's output, h = the MLP's input, per row. DAA and the
sink / s2 attention modes switch the attention to reference_attn's per-row eager loop. RoPE per row: a row whose
adapter has `rope_scaling` gets cos/sin from transformers' rotary for that setting
(hylorada.method.rope.scaled_rotary; dynamic NTK unscaled, as served), other rows the base's. Trained norms per
row: each RMSNorm's output for a row whose adapter carries that norm's weight is functional.rms_norm with it.
Trained embedding rows per row: a token whose id is among its adapter's embed_tokens.ids takes that row (a plain
loop over the tokens: the slow twin of functional.embedding_lookup, which the served path uses).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import Tensor, nn

from hylorada import functional as F
from hylorada.reference import attention as reference_attn
from hylorada.method.positions import PositionContext, find_rotary_embedding, track_positions
from hylorada.format.adapter import ServedAdapter


class _Batch:
    """What one forward needs: the adapter of each row and the positions RoPE sees ([B or 1, T])."""

    def __init__(self, adapters: list[ServedAdapter | None]):
        self.adapters = adapters
        self.positions = PositionContext(2, 4)   # bucket params come from each adapter; only position_ids is used

    def pos(self, b: int) -> Tensor:
        p = self.positions.position_ids
        return p[b if p.shape[0] > 1 else 0]


class _ServedLinear(nn.Module):
    """Per-row served form of one base linear (layer `layer`, module e.g. 'self_attn.q_proj')."""

    def __init__(self, base_layer: nn.Linear, layer: int, module: str, batch: _Batch):
        super().__init__()
        self.base_layer, self.layer, self.module = base_layer, layer, module
        self.__dict__["batch"] = batch

    def forward(self, x: Tensor) -> Tensor:                       # x: [B, T, d_in]
        W, bias = self.base_layer.weight, self.base_layer.bias
        rows = []
        for b, ad in enumerate(self.batch.adapters):
            lo = ad.layer_lora(self.layer, self.module) if ad is not None else None
            if lo is None:
                rows.append(nn.functional.linear(x[b], W, bias))
                continue
            A, Bf = (t.to(x.dtype) for t in lo)
            c = ad.c(self.layer, self.module)
            rows.append(F.served_linear(x[b], W, bias, A, Bf, c, _position_scale(ad, self.layer, self.module, self.batch.pos(b))))
        return torch.stack(rows)


def _position_scale(ad: ServedAdapter, layer: int, module: str, pos: Tensor) -> Tensor | None:
    """p(pos) [T] for one row, or None when the adapter has no position bias."""
    pb, w = ad.position_bias, ad.w_pos(layer, module)
    if pb is None or w is None:
        return None
    cfg = ad.meta.position_bias
    return F.position_scale(pb, w, F.position_bucket(pos, cfg.num_buckets, cfg.max_position))


def _mode(ad: ServedAdapter) -> str:
    return ad.meta.attention.mode


class ServedReference:
    """A base model (loaded once) run with any batch of served adapters, one (or none) per sequence."""

    def __init__(self, base_dir: str | Path, dtype: torch.dtype = torch.float32):
        from transformers import AutoModelForCausalLM
        self.model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype).eval()
        self.dtype = dtype
        self.decoder_layers = self.model.model.layers
        self._rotaries: dict[str, nn.Module] = {}            # RoPE setting -> transformers rotary for it

    def _rotary(self, meta: dict) -> nn.Module:
        import json
        from hylorada.method.rope import scaled_rotary
        key = json.dumps(meta, sort_keys=True)
        if key not in self._rotaries:
            self._rotaries[key] = scaled_rotary(meta, self.model.config)
        return self._rotaries[key]

    def _rope_hook(self, adapters: list[ServedAdapter | None]):
        """Forward hook on the base's rotary: rows whose adapter scales RoPE get that setting's cos/sin."""
        rows = [(b, self._rotary(ad.meta.rope_scaling)) for b, ad in enumerate(adapters)
                if ad is not None and ad.meta.rope_scaling is not None]

        def hook(_module, args, kwargs, out):
            x = kwargs.get("x", args[0] if args else None)
            pos = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
            cos, sin = (t.expand(len(adapters), *t.shape[1:]).clone() for t in out)
            for b, rot in rows:
                cb, sb = rot(x, pos[b if pos.shape[0] > 1 else 0][None])
                cos[b], sin[b] = cb[0], sb[0]
            return cos, sin
        return hook if rows else None

    # --- one batched forward --------------------------------------------------------------
    @contextlib.contextmanager
    def _installed(self, adapters: list[ServedAdapter | None]):
        """Swap the adapted linears for _ServedLinear and hook landmarks; always restore the base."""
        batch = _Batch(adapters)
        wanted = sorted({im for ad in adapters if ad is not None for im in ad.modules()})
        swapped, hooks, cfg_attn = [], [track_positions(self.model, batch.positions)], None
        try:
            for i, mod in wanted:
                parent_name, leaf = mod.rsplit(".", 1)
                parent = self.decoder_layers[i].get_submodule(parent_name)
                orig = getattr(parent, leaf)
                setattr(parent, leaf, _ServedLinear(orig, i, mod, batch))
                swapped.append((parent, leaf, orig))
            rope = self._rope_hook(adapters)
            if rope is not None:
                hooks.append(find_rotary_embedding(self.model).register_forward_hook(rope, with_kwargs=True))
            if any(ad is not None and ad.embedding_rows is not None for ad in adapters):
                hooks.append(self.model.get_input_embeddings().register_forward_hook(self._embed_hook(batch)))
            for name, norm in self._norms():
                if any(ad is not None and ad.norm(name) is not None for ad in adapters):
                    hooks.append(norm.register_forward_hook(self._norm_hook(name, batch)))
            for i, layer in enumerate(self.decoder_layers):
                if any(ad is not None and ad.landmark(i) is not None for ad in adapters):
                    hooks.append(layer.mlp.register_forward_hook(self._landmark_hook(i, batch)))
            if any(ad is not None and (ad.meta.daa is not None or _mode(ad) != "full") for ad in adapters):
                reference_attn.register()
                for layer in self.decoder_layers:
                    layer.self_attn.__dict__["_served_ref_batch"] = batch
                cfg_attn, self.model.config._attn_implementation = self.model.config._attn_implementation, reference_attn.NAME
            yield batch
        finally:
            if cfg_attn is not None:
                self.model.config._attn_implementation = cfg_attn
                for layer in self.decoder_layers:
                    layer.self_attn.__dict__.pop("_served_ref_batch", None)
            for parent, leaf, orig in swapped:
                setattr(parent, leaf, orig)
            for h in hooks:
                h.remove()

    def _norms(self):
        """(side-file name, module) of every RMSNorm a served adapter may carry a trained weight for."""
        for i, layer in enumerate(self.decoder_layers):
            yield f"layers.{i}.input_layernorm", layer.input_layernorm
            yield f"layers.{i}.post_attention_layernorm", layer.post_attention_layernorm
        yield "norm", self.model.model.norm

    @staticmethod
    def _norm_hook(name: str, batch: _Batch):
        def hook(norm, args, out):                                 # args[0], out: [B, T, hidden]
            rows = [F.rms_norm(args[0][b], w.to(out.dtype), norm.variance_epsilon)
                    if ad is not None and (w := ad.norm(name)) is not None else out[b]
                    for b, ad in enumerate(batch.adapters)]
            return torch.stack(rows)
        return hook

    @staticmethod
    def _embed_hook(batch: _Batch):
        def hook(_embedding, args, out):                           # args[0] input_ids [B, T], out [B, T, hidden]
            out = out.clone()
            for b, ad in enumerate(batch.adapters):
                if ad is None or ad.embedding_rows is None:
                    continue
                ids, rows = ad.embedding_rows
                where = {int(t): j for j, t in enumerate(ids.tolist())}
                for t, tok in enumerate(args[0][b].tolist()):
                    if tok in where:
                        out[b, t] = rows[where[tok]].to(out.dtype)
            return out
        return hook

    @staticmethod
    def _landmark_hook(i: int, batch: _Batch):
        def hook(_mlp, args, out):                                 # args[0], out: [B, T, hidden]
            h = args[0]
            add = [F.landmark_readout(h[b], *lm) if (ad is not None and (lm := ad.landmark(i)) is not None)
                   else torch.zeros_like(out[b]) for b, ad in enumerate(batch.adapters)]
            return out + torch.stack(add)
        return hook

    @torch.no_grad()
    def logits(self, input_ids: Tensor, adapters: list[ServedAdapter | None], attention_mask: Tensor | None = None) -> Tensor:
        """input_ids [B, T] -> logits [B, T, V] (float32). adapters[b] drives row b (None: the base)."""
        if len(adapters) != input_ids.shape[0]:
            raise ValueError(f"{len(adapters)} adapters for a batch of {input_ids.shape[0]}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
        with self._installed(adapters):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        return out.logits.float()

    @torch.no_grad()
    def greedy(self, prompts: list[list[int]], adapters: list[ServedAdapter | None], max_new_tokens: int,
               top_logprobs: int = 5) -> list[tuple[list[int], list[dict[int, float]]]]:
        """Greedy decoding, one sequence at a time, full recompute per step, no EOS stop."""
        results = []
        for prompt, ad in zip(prompts, adapters, strict=True):
            ids, steps = list(prompt), []
            for _ in range(max_new_tokens):
                logp = torch.log_softmax(self.logits(torch.tensor([ids]), [ad])[0, -1], dim=-1)
                top = torch.topk(logp, top_logprobs)
                steps.append({int(t): float(v) for t, v in zip(top.indices, top.values)})
                ids.append(int(torch.argmax(logp)))
            results.append((ids[len(prompt):], steps))
        return results
