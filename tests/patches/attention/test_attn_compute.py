"""The serving-side reference attention (patches/attn_compute.py, no engine) against the method's slow
twins (hylorada/reference/loops.py: Python loops over heads and queries): DAA, sink + window, S² with
sinks, read through a paged KV cache with a shuffled block table, in chunks (as chunked prefill and
decode steps arrive), with small query blocks; plus the mode parsing and the server-wide flag."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hylorada.reference import loops as R
from hylorada_patches import attn_compute as C
from hylorada_patches.attn_state import AttnState, ModeSpec, server_default

H, HKV, D, BS, T = 4, 2, 32, 8, 45
SCALE = D ** -0.5


def paged(k, v, transposed: bool, seed=0):
    """Write k/v [T, Hkv, d] into a shuffled paged cache as CPU_ATTN lays it out; returns (PagedKV, block_row)."""
    nblocks, hkv = (k.shape[0] + BS - 1) // BS, k.shape[1]
    block_row = torch.randperm(nblocks + 3, generator=torch.Generator().manual_seed(seed))[:nblocks]
    kv = torch.zeros(nblocks + 3, hkv, BS, 2 * D)
    kc, vc = kv.view(nblocks + 3, hkv, 2 * BS, D).chunk(2, dim=2)
    for t in range(k.shape[0]):
        b, o = int(block_row[t // BS]), t % BS
        vc[b, :, o] = v[t]
        if transposed:
            kc[b].reshape(hkv, D * BS).view(hkv, D, BS)[:, :, o] = k[t]    # [d, block] per head ("vec" ISA)
        else:
            kc[b, :, o] = k[t]
    return C.PagedKV(kc, vc, transposed), block_row


def daa_tables(seed=3, nb=64):
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(head_scale=1 + 0.3 * torch.randn(H, generator=g), bucket_bias=torch.randn(H, nb, generator=g),
                           max_position=32768)


def served_attention(q, kv, block_row, spec, daa, prompt_len, chunks):
    """Queries q [T, H, d] in chunks (ends of each step), as vLLM would hand them over."""
    out, start = torch.zeros_like(q), 0
    for end in chunks:
        C.request_attention(q[start:end], kv, block_row, end, spec, daa, prompt_len, SCALE, out[start:end])
        start = end
    return out


@pytest.fixture()
def qkv():
    g = torch.Generator().manual_seed(0)
    return torch.randn(T, H, D, generator=g), torch.randn(T, HKV, D, generator=g), torch.randn(T, HKV, D, generator=g)


def as_ref(x):                                              # [T, h, d] -> [1, h, T, d]
    return x.permute(1, 0, 2)[None]


@pytest.mark.parametrize("transposed", [True, False])
def test_gather_reads_back_both_layouts(qkv, transposed):
    _, k, v = qkv
    kv, row = paged(k, v, transposed)
    pos = torch.tensor([0, 7, 8, 44, 3])
    gk, gv = kv.gather(row, pos)
    assert torch.equal(gk, k[pos]) and torch.equal(gv, v[pos])


@pytest.mark.parametrize("use_daa", [False, True])
@pytest.mark.parametrize("mode", ["full", "sink", "s2"])
def test_request_attention_equals_slow_twin(qkv, monkeypatch, mode, use_daa):
    monkeypatch.setattr(C, "QBLOCK", 8)
    q, k, v = qkv
    kv, row = paged(k, v, transposed=True)
    daa = daa_tables() if use_daa else None
    daa_t = (daa.head_scale, daa.bucket_bias, daa.max_position) if use_daa else None
    pos = torch.arange(T)[None]
    if mode == "full":
        spec = ModeSpec()
        want = R.causal_reference(as_ref(q), as_ref(k), as_ref(v), SCALE, pos, pos, daa)
    elif mode == "sink":
        spec = ModeSpec("sink", sink_tokens=4, window=6)
        want = R.sink_reference(as_ref(q), as_ref(k), as_ref(v), SCALE, 4, 6, pos, pos, daa)
    else:
        spec = ModeSpec("s2", sink_tokens=3, s2_ratio=0.25)
        want = R.s2_reference(as_ref(q), as_ref(k), as_ref(v), SCALE, 0.25, 3, pos, daa)
    got = served_attention(q, kv, row, spec, daa_t, T, chunks=[17, 30, T])          # chunked prefill of the prompt
    torch.testing.assert_close(got, want[0].permute(1, 0, 2), rtol=1e-5, atol=1e-5)


def test_s2_decode_is_causal_over_the_s2_prompt(qkv):
    """Tokens after the prompt (P) attend to every earlier key; the prompt keeps its S² groups of G(P)."""
    q, k, v = qkv
    kv, row = paged(k, v, transposed=True)
    P = 30
    spec = ModeSpec("s2", sink_tokens=2, s2_ratio=0.25)
    got = served_attention(q, kv, row, spec, None, P, chunks=[P] + list(range(P + 1, T + 1)))
    pre = R.s2_reference(as_ref(q[:P]), as_ref(k[:P]), as_ref(v[:P]), SCALE, 0.25, 2)
    torch.testing.assert_close(got[:P], pre[0].permute(1, 0, 2), rtol=1e-5, atol=1e-5)
    full = R.causal_reference(as_ref(q), as_ref(k), as_ref(v), SCALE)
    torch.testing.assert_close(got[P:], full[0].permute(1, 0, 2)[P:], rtol=1e-5, atol=1e-5)


def test_sink_reads_bounded_keys():
    spec = ModeSpec("sink", sink_tokens=4, window=16)
    assert C.key_positions(spec, 1000, 1001).tolist() == [0, 1, 2, 3] + list(range(985, 1001))
    assert C.key_positions(spec, 5, 9).tolist() == list(range(9))


def test_modes_and_server_flag():
    assert ModeSpec.from_meta(None) == ModeSpec()
    assert ModeSpec.from_meta({"mode": "sink", "sink_tokens": 4, "window": 32}) == ModeSpec("sink", 4, 32)
    for bad in ({"mode": "ring"}, {"mode": "sink", "sink_tokens": 0, "window": 8}, {"mode": "s2", "s2_group_size_ratio": 2}):
        with pytest.raises(ValueError):
            ModeSpec.from_meta(bad)
    assert server_default({}) == ModeSpec()
    assert server_default({"HYLORADA_ATTENTION": '{"mode": "sink", "sink_tokens": 2, "window": 8}'}) == ModeSpec("sink", 2, 8)
    with pytest.raises(ValueError, match="HYLORADA_ATTENTION"):
        server_default({"HYLORADA_ATTENTION": "sink"})
    st = AttnState(2, ModeSpec("sink", 2, 8))          # server-wide default: base rows and "full" adapters use it
    st.begin_step([0, 5], [10, 10], [5, None])
    assert st.rows(0) == [0, 1] and st.request(0, 0)[0].mode == "sink"
    st.end_step()
    assert st.rows(0) == []


@pytest.mark.parametrize("mode", ["full", "sink"])
def test_batched_decode_equals_per_request(mode):
    """decode_attention (one query per request, batched, DAA per slot) == request_attention per request."""
    g = torch.Generator().manual_seed(5)
    lens = [3, 9, 30, 45, 17]
    spec = ModeSpec("sink", sink_tokens=4, window=6) if mode == "sink" else ModeSpec()
    slots = [0, 1, 0, 2, 1]
    d = daa_tables(seed=7)
    daa = {1: (d.head_scale, d.bucket_bias, d.max_position)}
    nblk = (max(lens) + BS - 1) // BS
    kv_all = torch.zeros(len(lens) * nblk, HKV, BS, 2 * D)
    kc, vc = kv_all.view(-1, HKV, 2 * BS, D).chunk(2, dim=2)
    rows = torch.randperm(len(lens) * nblk, generator=g).view(len(lens), nblk)
    kv = C.PagedKV(kc, vc, keys_transposed=False)
    kc.copy_(torch.randn(kc.shape, generator=g))
    vc.copy_(torch.randn(vc.shape, generator=g))
    q = torch.randn(len(lens), H, D, generator=g)
    got = C.decode_attention(q, kv, rows, torch.tensor(lens), spec, slots, daa, SCALE)
    for r, L in enumerate(lens):
        want = torch.zeros(1, H, D)
        C.request_attention(q[r:r + 1], kv, rows[r], L, spec, daa.get(slots[r]), 0, SCALE, want)
        torch.testing.assert_close(got[r], want[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["s2", "sink"])
def test_head_shards_equal_all_heads(qkv, mode):
    """Tensor parallelism: each rank's slice of heads (S² shift by global head, DAA rows sliced) == all heads."""
    q, k, v = qkv
    kv, row = paged(k, v, transposed=True)
    d = daa_tables()
    daa = (d.head_scale, d.bucket_bias, d.max_position)
    spec = ModeSpec("s2", sink_tokens=3, s2_ratio=0.25) if mode == "s2" else ModeSpec("sink", sink_tokens=2, window=5)
    full = torch.zeros_like(q)
    C.request_attention(q, kv, row, T, spec, daa, T, SCALE, full)
    for rank in range(2):                                     # tp = 2: heads [0, 2) and [2, 4); kv heads split alike
        hs = range(2 * rank, 2 * rank + 2)
        kv_r, row_r = paged(k[:, rank:rank + 1], v[:, rank:rank + 1], transposed=True)
        part = torch.zeros(T, 2, D)
        C.request_attention(q[:, hs.start:hs.stop], kv_r, row_r, T, spec, (daa[0][hs.start:hs.stop], daa[1][hs.start:hs.stop],
                            daa[2]), T, SCALE, part, hs, H)
        torch.testing.assert_close(part, full[:, hs.start:hs.stop], rtol=1e-5, atol=1e-5)


def test_scheduler_side_mode_lookup(tmp_path):
    """attn_kv reads a request's mode from its adapter folder once per path; a bad or missing file never
    raises in the scheduler (the worker's loader refuses the adapter with its reason); gap blocks."""
    from hylorada_patches.attn_kv import gap_blocks, request_spec
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    (good / "hylorada.json").write_text('{"attention": {"mode": "sink", "sink_tokens": 4, "window": 16}}')
    (bad / "hylorada.json").write_text("{not json")
    mgr = SimpleNamespace()

    def req(path):
        return SimpleNamespace(lora_request=None if path is None else SimpleNamespace(lora_path=str(path)))
    assert request_spec(mgr, req(good)) == ModeSpec("sink", 4, 16)
    assert request_spec(mgr, req(bad)) == ModeSpec() and request_spec(mgr, req(None)) == ModeSpec()
    assert request_spec(mgr, req(tmp_path / "missing")) == ModeSpec()
    from hylorada_patches import attn_kv                        # bounded under hot-swaps: one new path per version
    for i in range(attn_kv.MAX_CACHED_SPECS + 10):
        request_spec(mgr, req(tmp_path / f"v{i}"))
    assert len(mgr._hylorada_specs) <= attn_kv.MAX_CACHED_SPECS
    assert request_spec(mgr, req(good)) == ModeSpec("sink", 4, 16)      # re-read after a clear
    assert gap_blocks(ModeSpec("sink", 4, 16), processed=100, block_size=32) == (1, 2)   # blocks [1, 2): tokens 32..63
    assert gap_blocks(ModeSpec("sink", 4, 16), processed=40, block_size=32) == (1, 0)    # nothing to free yet
