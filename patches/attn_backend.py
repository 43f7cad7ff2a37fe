"""Wraps `vllm.v1.attention.backends.cpu_attn.CPUAttentionBackendImpl.forward` — the attention of every
decoder layer on vLLM 0.32's CPU platform, which always selects CPU_ATTN (FlexAttention and its
score_mod/mask_mod hooks are not selectable there) — so that the requests whose adapter has
PositionalDAA or a `sink`/`s2` attention mode get that attention, and no other request changes.

Per layer call, with the step's plan from attn_state (planned by engine.py):
  - no variant request at this layer: vLLM's kernel, untouched;
  - some: vLLM's kernel for the other requests only (kernel_subset: their tokens and a sub-metadata),
    and each variant request's output rows from attn_compute (request_attention / decode_attention) over the paged KV cache
    (already holding this step's keys: CPU_ATTN writes the cache in do_kv_cache_update before forward).
The kernel cannot express a per-head bucket bias, a sink+window union or S² groups, hence the
reference path (logged once). Decoder self-attention only; encoder/cross attention is untouched.

The paged key layout is ISA-specific (the "vec" ISA stores each key block transposed); it is found by a
probe write through vLLM's own cpu_attn_reshape_and_cache, and an unknown layout stops with a message.
"""
from __future__ import annotations

import dataclasses
import functools
import logging

import torch
from vllm.v1.attention.backend import AttentionType

from .attn_compute import PagedKV, decode_attention, request_attention
from .attn_state import server_default
from .wrap import wrap

log = logging.getLogger("vllm.hylorada_patches")     # under vLLM's logger: printed with its own lines
_LOGGED = set()


def _once(key: str, msg: str, *args) -> None:
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.info(msg, *args)


@functools.lru_cache(maxsize=None)
def keys_transposed(isa: str, block_size: int, num_kv_heads: int, head_size: int, dtype: torch.dtype) -> bool:
    """Write known keys with vLLM's cache op for this ISA and find which layout reads them back."""
    from vllm import _custom_ops as ops
    kv = torch.zeros(2, num_kv_heads, block_size, 2 * head_size, dtype=dtype)
    kc, vc = kv.view(2, num_kv_heads, 2 * block_size, head_size).chunk(2, dim=2)
    n = block_size + 3
    k = torch.randn(n, num_kv_heads, head_size).to(dtype)
    v = torch.randn(n, num_kv_heads, head_size).to(dtype)
    ops.cpu_attn_reshape_and_cache(k, v, kc, vc, torch.arange(n), isa, k_scale=1.0, v_scale=1.0,
                                   kv_cache_dtype="auto")
    pos, block_row = torch.arange(n), torch.tensor([0, 1])
    for transposed in (True, False):
        gk, gv = PagedKV(kc, vc, transposed).gather(block_row, pos)
        if torch.equal(gk, k) and torch.equal(gv, v):
            return transposed
    raise RuntimeError(f"hylorada_patches: unknown CPU_ATTN KV-cache layout for isa={isa!r} (dtype {dtype}, "
                       f"block {block_size}, head {head_size}); DAA/sink/s2 attention cannot read it")


def layer_index(layer) -> int:
    idx = getattr(layer, "_hylorada_layer_index", None)
    if idx is None:
        from vllm.model_executor.models.utils import extract_layer_index
        idx = layer._hylorada_layer_index = extract_layer_index(layer.layer_name)
    return idx


def head_shard(num_heads: int) -> tuple[range, int]:
    """(global head indices this tensor-parallel rank holds, total heads): attention heads are split evenly."""
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
    tp, rank = get_tensor_model_parallel_world_size(), get_tensor_model_parallel_rank()
    return range(rank * num_heads, (rank + 1) * num_heads), tp * num_heads


def shard_daa(daa: tuple | None, heads: range) -> tuple | None:
    return None if daa is None else (daa[0][heads.start:heads.stop], daa[1][heads.start:heads.stop], daa[2])


def variant_forward(impl, layer, query, kv_cache, meta, output, state, rows: list[int]) -> None:
    """Overwrite output rows of the variant requests `rows` with the reference attention: decode rows
    batched per attention mode (attn_compute.decode_attention), prefill chunks one request at a time."""
    nb, hkv, bs, _ = kv_cache.shape
    key_cache, value_cache = kv_cache.view(nb, hkv, 2 * bs, -1).chunk(2, dim=2)
    kv = PagedKV(key_cache, value_cache, keys_transposed(layer.isa, bs, hkv, impl.head_size, kv_cache.dtype))
    out = output.view(output.shape[0], impl.num_heads, impl.head_size)
    starts, seq_lens, li = meta.query_start_loc.tolist(), meta.seq_lens.tolist(), layer_index(layer)
    heads, total = head_shard(impl.num_heads)
    decode: dict = {}                                            # spec -> [(request, slot, daa)]
    for r in rows:
        a, b = starts[r], starts[r + 1]
        spec, daa, prompt_len = state.request(r, li)
        daa = shard_daa(daa, heads)
        if b - a == 1 and (spec.mode != "s2" or seq_lens[r] - 1 >= prompt_len):
            decode.setdefault(spec, []).append((r, int(state.req_slots[r]), daa))
            continue
        request_attention(query[a:b], kv, meta.block_table[r], seq_lens[r], spec, daa, prompt_len, impl.scale,
                          out[a:b], heads, total)
    for spec, group in decode.items():
        reqs = torch.tensor([r for r, _, _ in group])
        tok = meta.query_start_loc[reqs].long()
        out[tok] = decode_attention(query[tok], kv, meta.block_table[reqs], meta.seq_lens[reqs].long(), spec,
                                    [s for _, s, _ in group], {s: d for _, s, d in group if d is not None}, impl.scale)


def kernel_subset(kernel, impl, layer, query, key, value, kv_cache, meta, output, keep: list[int], state) -> None:
    """vLLM's kernel for the requests `keep` only (the others are variant requests, recomputed after):
    their tokens gathered, a sub-metadata with its own scheduler metadata (built once per step and
    shared by the layers), outputs scattered back. Variant requests never pay full attention twice."""
    from vllm import _custom_ops as ops
    from vllm import envs
    ck = (id(meta), tuple(keep))
    sub = state.scratch.get(ck)
    if sub is None:
        keep_t = torch.tensor(keep)
        qsl = meta.query_start_loc
        lens = (qsl[1:] - qsl[:-1])[keep_t]
        tok = torch.repeat_interleave(qsl[:-1][keep_t] - torch.cat([lens.new_zeros(1), lens.cumsum(0)[:-1]]), lens) \
            + torch.arange(int(lens.sum()))                                        # token indices of `keep`
        sub_qsl = torch.cat([lens.new_zeros(1), lens.cumsum(0)]).to(qsl.dtype)
        seq_lens = meta.seq_lens[keep_t]
        sched = ops.cpu_attn_get_scheduler_metadata(
            num_reqs=len(keep), num_heads=impl.num_heads, num_kv_heads=impl.num_kv_heads, head_dim=impl.head_size,
            seq_lens=seq_lens, dtype=query.dtype, query_start_loc=sub_qsl, causal=meta.causal,
            sliding_window_size=impl.sliding_window, isa=layer.isa, enable_kv_split=envs.VLLM_CPU_ATTN_SPLIT_KV,
            dynamic_causal=None, kv_cache_dtype=impl.kv_cache_dtype)
        sub_meta = dataclasses.replace(meta, num_actual_tokens=int(sub_qsl[-1]), max_query_len=int(lens.max()),
                                       query_start_loc=sub_qsl, seq_lens=seq_lens, max_seq_len=int(seq_lens.max()),
                                       block_table=meta.block_table[keep_t], slot_mapping=meta.slot_mapping[tok],
                                       scheduler_metadata=sched)
        sub = state.scratch[ck] = (tok, sub_meta)
    tok, sub_meta = sub
    out = torch.empty((tok.shape[0],) + tuple(output.shape[1:]), dtype=output.dtype)
    kernel(impl, layer, query[tok], key[tok], value[tok], kv_cache, sub_meta, out)
    output[tok] = out


def forward(orig, self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs):
    """vLLM's kernel (`orig`) for every request without a variant at this layer; the reference for the others."""
    state = getattr(layer, "hylorada_attn", None)
    if state is None and _server_wide and self.attn_type == AttentionType.DECODER:
        raise RuntimeError("hylorada_patches: HYLORADA_ATTENTION (server-wide attention mode) needs the engine "
                           "started with LoRA enabled (--enable-lora): the per-step plan lives in the LoRA manager")
    if (state is None or attn_metadata is None or self.attn_type != AttentionType.DECODER
            or self.kv_sharing_target_layer_name is not None):
        return orig(self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
    rows = state.rows(layer_index(layer))
    num_reqs = attn_metadata.seq_lens.shape[0]
    if not rows:
        return orig(self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
    if state.req_slots.shape[0] != num_reqs:
        raise RuntimeError(f"hylorada_patches: step plan has {state.req_slots.shape[0]} requests, "
                           f"attention metadata {num_reqs}")
    _once("ref", "hylorada_patches: DAA / sink / s2 attention runs on a torch reference path over the "
          "paged KV cache for the requests that use it (CPU_ATTN cannot express it); others keep CPU_ATTN")
    if len(rows) < num_reqs and attn_metadata.dynamic_causal is None:
        kernel_subset(orig, self, layer, query, key, value, kv_cache, attn_metadata, output,
                      sorted(set(range(num_reqs)) - set(rows)), state)
    elif len(rows) < num_reqs:
        orig(self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
    variant_forward(self, layer, query, kv_cache, attn_metadata, output, state, rows)
    return output


_server_wide = False            # HYLORADA_ATTENTION asks for a variant (read once, at install)


def install() -> None:
    global _server_wide
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl
    _server_wide = server_default().mode != "full"               # a malformed HYLORADA_ATTENTION stops here
    wrap(CPUAttentionBackendImpl, "forward")(forward)
