"""`hylorada inspect ADAPTER_DIR [--base MODEL_DIR] [--max-rank R]`: validate and summarise a served adapter.

Runs every check load_served has (names, shapes, NaN/Inf, pickle, version, rank, and with --base the
base's shapes and shape hash) and prints a readable summary. Exit 0 when valid, 1 on any problem
(the one-line error names the file, tensor and reason).
"""
from __future__ import annotations

from hylorada.format.layout import AdapterError
from hylorada.format.adapter import ServedAdapter
from hylorada.format.load import load_served


def summary(ad: ServedAdapter, status: str = "valid") -> str:
    """A few aligned lines: kind, base, rank, targets, dynamic parts, RoPE, attention, size."""
    mods = ad.modules()
    layers = sorted({i for i, _ in mods})
    targets = sorted({m.rsplit(".", 1)[-1] for _, m in mods})
    base = ad.meta.base
    parts = []
    if ad.meta.has_scale:
        parts.append(f"c scale vectors ({sum(k.endswith('.c') for k in ad.dynamic)})")
    if (pb := ad.meta.position_bias) is not None:
        parts.append(f"position bias ({pb.num_buckets} buckets, max_position {pb.max_position}; "
                     f"{sum(k.endswith('.w_pos') for k in ad.dynamic)} w_pos)")
    if ad.meta.daa is not None:
        parts.append(f"DAA ({sum(k.endswith('daa.head_scale') for k in ad.dynamic)} layers)")
    if ad.meta.landmarks is not None:
        parts.append(f"landmarks (K={ad.meta.landmarks.num_landmarks}, "
                     f"{sum(k.endswith('landmark.keys') for k in ad.dynamic)} layers)")
    att = ad.meta.attention
    rows = [
        ("adapter", str(ad.path)),
        ("kind", f"{ad.kind} (format_version {ad.meta.format_version})"),
        ("base", f"{base.name or '?'} [{base.architecture or '?'}, shape_hash {base.shape_hash or '?'}]"
         if base else "not recorded (plain PEFT folder)"),
        ("rank", str(ad.rank)),
        ("targets", f"{', '.join(targets)} in {len(layers)} layers ({len(mods)} linears)"),
        ("dynamic parts", ", ".join(parts) if parts else "none (static: can merge)"),
        ("rope scaling", str(ad.meta.rope_scaling) if ad.meta.rope_scaling else "none"),
        ("attention", att.mode + (f" (sinks {att.sink_tokens}, window {att.window})" if att.mode == "sink" else "")),
        ("size", f"{ad.size_bytes / 1024:.1f} KiB in {len(ad.lora) + len(ad.dynamic)} tensors"),
        ("status", status),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def add_arguments(p) -> None:
    p.add_argument("adapter_dir", metavar="ADAPTER_DIR")
    p.add_argument("--base", default=None, metavar="MODEL_DIR", help="also check names, shapes and shape hash against this base")
    p.add_argument("--max-rank", type=int, default=None, help="the server's largest allowed rank")


def run(args) -> int:
    try:
        cfg = None
        if args.base:
            from hylorada.format.base import base_config
            cfg = base_config(args.base)
        ad = load_served(args.adapter_dir, base_config=cfg, max_rank=args.max_rank)
    except AdapterError as e:
        print(f"hylorada inspect: INVALID: {e}")
        return 1
    print(summary(ad, "valid" + (" for this base" if cfg is not None else " (no --base: shapes not checked against a base)")))
    return 0
