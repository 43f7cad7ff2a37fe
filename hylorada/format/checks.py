"""Validation of a loaded ServedAdapter: internal consistency, then against a base config.

Every failure raises AdapterError naming the file, the tensor and the reason; the first problem found is reported.
"""
from __future__ import annotations

from .adapter import ServedAdapter
from .base import base_linear_shapes, base_shape_hash
from .layout import (ADAPTER_WEIGHTS, DYN_KEY, DYNAMIC, EMBED_IDS, EMBED_ROWS, LORA_KEY, META, NORM_KEY, AdapterError,
                     lora_key)


def check_consistency(ad: ServedAdapter) -> None:
    """Names parse, A/B pair up with equal ranks, side-file tensors match the LoRA and hylorada.json."""
    wf, df, mf = ad.path / ADAPTER_WEIGHTS, ad.path / DYNAMIC, ad.path / META
    if not ad.lora:
        raise AdapterError(wf, "holds no LoRA tensors")
    for k, t in ad.lora.items():
        m = LORA_KEY.match(k)
        if not m:
            raise AdapterError(wf, "unexpected tensor name (want base_model.model.model.layers.{i}.<module>.lora_A|B.weight)", k)
        if t.dim() != 2:
            raise AdapterError(wf, f"must be 2-D (got shape {list(t.shape)})", k)
        other = lora_key(int(m.group(1)), m.group(2), "B" if m.group(3) == "A" else "A")
        if other not in ad.lora:
            raise AdapterError(wf, f"has no partner {other!r}", k)
        if m.group(3) == "A" and t.shape[0] != ad.lora[other].shape[1]:
            raise AdapterError(wf, f"rank {t.shape[0]} differs from lora_B's {ad.lora[other].shape[1]}", k)
    mods = set(ad.modules())
    meta = ad.meta
    pb, daa, lm = meta.position_bias, meta.daa, meta.landmarks
    for k, t in ad.dynamic.items():
        m = DYN_KEY.match(k)
        if k == "position_bias":
            if not pb:
                raise AdapterError(df, "present but hylorada.json has position_bias null", k)
            if list(t.shape) != [pb.num_buckets]:
                raise AdapterError(df, f"shape {list(t.shape)} != [num_buckets={pb.num_buckets}]", k)
            continue
        if k in (EMBED_IDS, EMBED_ROWS):
            if not meta.embeddings:
                raise AdapterError(df, "trained embedding rows but hylorada.json has embeddings false", k)
            continue
        if NORM_KEY.match(k):
            if not meta.norms:
                raise AdapterError(df, "a trained norm weight but hylorada.json has norms false", k)
            if t.dim() != 1:
                raise AdapterError(df, f"a norm weight must be 1-D [hidden] (got shape {list(t.shape)})", k)
            continue
        if not m:
            raise AdapterError(df, "unknown tensor name", k)
        i = int(m.group(1))
        if m.group(2):
            mod, what = m.group(2), m.group(3)
            if (i, mod) not in mods:
                raise AdapterError(df, f"no LoRA for layers.{i}.{mod} in {ADAPTER_WEIGHTS}", k)
            if what == "c" and list(t.shape) != [ad.lora[lora_key(i, mod, "B")].shape[0]]:
                raise AdapterError(df, f"shape {list(t.shape)} != [d_out={ad.lora[lora_key(i, mod, 'B')].shape[0]}]", k)
            if what == "w_pos" and (t.dim() != 0 or not pb):
                raise AdapterError(df, "w_pos must be a scalar and needs position_bias in hylorada.json", k)
        elif m.group(4):
            if not daa:
                raise AdapterError(df, "present but hylorada.json has daa null", k)
            hs = ad.dynamic.get(f"layers.{i}.daa.head_scale")
            bb = ad.dynamic.get(f"layers.{i}.daa.bucket_bias")
            if hs is None or bb is None or hs.dim() != 1 or list(bb.shape) != [hs.shape[0], daa.num_buckets]:
                raise AdapterError(df, f"daa needs head_scale [H] and bucket_bias [H, num_buckets={daa.num_buckets}]", k)
        else:
            if not lm:
                raise AdapterError(df, "present but hylorada.json has landmarks null", k)
            km, vm, g = (ad.dynamic.get(f"layers.{i}.landmark.{n}") for n in ("keys", "values", "gate"))
            K = lm.num_landmarks
            if km is None or vm is None or g is None or km.shape != vm.shape or km.dim() != 2 or km.shape[0] != K or g.dim() != 0:
                raise AdapterError(df, f"landmark needs keys and values [K={K}, hidden] and gate []", k)
    if meta.has_scale and not any(k.endswith(".c") for k in ad.dynamic):
        raise AdapterError(mf, "has_scale is true but no c vector is stored", "c")
    if pb:
        if "position_bias" not in ad.dynamic:
            raise AdapterError(df, "missing (hylorada.json enables position_bias)", "position_bias")
        for i, mod in sorted(mods):
            if f"layers.{i}.{mod}.w_pos" not in ad.dynamic:
                raise AdapterError(df, "missing (position_bias needs one w_pos per adapted module)", f"layers.{i}.{mod}.w_pos")
    if lm and not any(k.endswith("landmark.keys") for k in ad.dynamic):
        raise AdapterError(df, "missing (hylorada.json enables landmarks)", "layers.{i}.landmark.keys")
    if meta.norms and not any(NORM_KEY.match(k) for k in ad.dynamic):
        raise AdapterError(df, "missing (hylorada.json says norms: true)", "layers.{i}.input_layernorm.weight")
    if daa and not any(k.endswith("daa.head_scale") for k in ad.dynamic):
        raise AdapterError(df, "missing (hylorada.json enables daa)", "layers.{i}.daa.head_scale")
    if meta.embeddings:
        check_embedding_rows(ad)


def check_embedding_rows(ad: ServedAdapter) -> None:
    """embed_tokens.ids [k] int64 strictly increasing and >= 0, embed_tokens.rows [k, hidden], k >= 1."""
    df = ad.path / DYNAMIC
    for k in (EMBED_IDS, EMBED_ROWS):
        if k not in ad.dynamic:
            raise AdapterError(df, "missing (hylorada.json says embeddings: true)", k)
    ids, rows = ad.dynamic[EMBED_IDS], ad.dynamic[EMBED_ROWS]
    if ids.dim() != 1 or ids.numel() == 0:
        raise AdapterError(df, f"must be a non-empty 1-D list of token ids (got shape {list(ids.shape)})", EMBED_IDS)
    if bool((ids < 0).any()) or (ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all())):
        raise AdapterError(df, "token ids must be >= 0 and strictly increasing (one row per token, sorted)", EMBED_IDS)
    if rows.dim() != 2 or rows.shape[0] != ids.numel():
        raise AdapterError(df, f"shape {list(rows.shape)} != [k={ids.numel()} ids, hidden]", EMBED_ROWS)


def check_against_base(ad: ServedAdapter, base_config) -> None:
    """Every tensor name and shape fits the base; the recorded shape_hash (if any) is the base's."""
    wf, df, mf = ad.path / ADAPTER_WEIGHTS, ad.path / DYNAMIC, ad.path / META
    base = ad.meta.base
    want = base_shape_hash(base_config)
    if base is not None and base.shape_hash and base.shape_hash != want:
        raise AdapterError(mf, f"adapter made for another base: shape_hash {base.shape_hash} (base "
                           f"{base.name!r}) != this base's {want}", "base.shape_hash")
    shapes = base_linear_shapes(base_config)
    for i, mod in ad.modules():
        name = f"layers.{i}.{mod}"
        if name not in shapes:
            raise AdapterError(wf, f"the base has no linear layer {name}", lora_key(i, mod, "A"))
        d_out, d_in = shapes[name]
        A, B = ad.layer_lora(i, mod)
        if A.shape[1] != d_in:
            raise AdapterError(wf, f"shape {list(A.shape)} does not fit the base ([r, {d_in}])", lora_key(i, mod, "A"))
        if B.shape[0] != d_out:
            raise AdapterError(wf, f"shape {list(B.shape)} does not fit the base ([{d_out}, r])", lora_key(i, mod, "B"))
    hidden, heads, n_layers = base_config.hidden_size, base_config.num_attention_heads, base_config.num_hidden_layers
    for k, t in ad.dynamic.items():
        if k.startswith("layers.") and int(k.split(".")[1]) >= n_layers:
            raise AdapterError(df, f"layer index beyond the base's {n_layers} layers", k)
        if ".landmark." in k and t.dim() == 2 and t.shape[1] != hidden:
            raise AdapterError(df, f"shape {list(t.shape)} does not fit the base ([K, {hidden}])", k)
        if NORM_KEY.match(k) and list(t.shape) != [hidden]:
            raise AdapterError(df, f"shape {list(t.shape)} does not fit the base ([{hidden}])", k)
        if k.endswith("daa.head_scale") and t.shape[0] != heads:
            raise AdapterError(df, f"shape {list(t.shape)} does not fit the base ([{heads}] heads)", k)
    if (emb := ad.embedding_rows) is not None:
        ids, rows = emb
        if getattr(base_config, "tie_word_embeddings", False):
            raise AdapterError(df, "this base ties its input and output embeddings (tie_word_embeddings), so trained "
                               "embedding rows change its output projection too, which is not served per adapter; "
                               "use `hylorada merge` to write a standalone model", EMBED_ROWS)
        if int(ids[-1]) >= base_config.vocab_size:
            raise AdapterError(df, f"token id {int(ids[-1])} is beyond the base's vocabulary of "
                               f"{base_config.vocab_size}", EMBED_IDS)
        if rows.shape[1] != hidden:
            raise AdapterError(df, f"shape {list(rows.shape)} does not fit the base ([k, {hidden}])", EMBED_ROWS)


# Bounds on values that are finite but absurd: a LoRA delta a hundred times the weight it adapts, or a
# scale no training produces, only ever overflows the served math (inf, then NaN) — refuse it by name.
MAX_DELTA_RATIO = 100.0           # ||B'A||_F / ||W||_F per adapted linear
MAX_ABS = {"c": 1e3, "head_scale": 1e3, "bucket_bias": 1e4, "keys": 1e4, "values": 1e4, "gate": 1e4,
           "w_pos": 1e4, "position_bias": 1e4, "weight": 1e3, "rows": 1e3}
MAX_ABS_LORA = 1e4                # |A|, |B'| elementwise when the base's norms are not at hand


def delta_norm(A, B):
    """||B A||_F without forming B A: sqrt(trace((B^T B)(A A^T))), two [r, r] products. A [r, in], B [out, r]."""
    a, b = A.double(), B.double()
    return float(((b.T @ b) * (a @ a.T)).sum().clamp_min(0).sqrt())


def check_magnitudes(ad: ServedAdapter, base_norms: dict[str, float] | None = None) -> None:
    """Every side-file tensor within MAX_ABS of its kind; every LoRA delta within MAX_DELTA_RATIO x ||W||_F of
    the base linear it adapts (base_norms: 'layers.{i}.{module}' -> ||W||_F), or each A/B' entry within
    MAX_ABS_LORA when base_norms is None."""
    wf, df = ad.path / ADAPTER_WEIGHTS, ad.path / DYNAMIC
    for k, t in ad.dynamic.items():
        kind = k.rsplit(".", 1)[-1]
        bound = MAX_ABS.get(kind)
        if bound is not None and t.numel() and float(t.abs().max()) > bound:
            raise AdapterError(df, f"values up to {float(t.abs().max()):.3g}: above the bound {bound:g} for {kind} "
                               "(finite but absurd; it would overflow the served math)", k)
    for i, mod in ad.modules():
        A, B = ad.layer_lora(i, mod)
        if base_norms is not None and f"layers.{i}.{mod}" in base_norms:
            w = base_norms[f"layers.{i}.{mod}"]
            ratio = delta_norm(A, B) / max(w, 1e-12)
            if not ratio <= MAX_DELTA_RATIO:
                raise AdapterError(wf, f"||B'A|| is {ratio:.3g} x the base weight's norm (bound {MAX_DELTA_RATIO:g}): "
                                   "finite but absurd", lora_key(i, mod, "B"))
        else:
            for which, t in (("A", A), ("B", B)):
                if t.numel() and float(t.abs().max()) > MAX_ABS_LORA:
                    raise AdapterError(wf, f"values up to {float(t.abs().max()):.3g}: above {MAX_ABS_LORA:g} "
                                       "(finite but absurd)", lora_key(i, mod, which))
