"""Each replica's command line, from the one the user gave `hylorada-serve --replicas N` (pure functions).

    replica_argv(argv, config) -> argv without the replica options and without --host/--port (each replica listens
    on 127.0.0.1 at a port of its own), paths made absolute (the replica runs in a Ray worker's directory), and
    --max-cpu-loras = max(--models-per-replica, --max-loras) unless given, so that the adapters Serve's routing
    counts as held are the ones the replica's engine keeps cached.
    with_audit_suffix(argv, tag) -> --audit-log FILE becomes FILE.<tag>: one file per replica, each rotated alone.
    without_key_flags(argv) -> argv without --api-key/--admin-key/--metrics-key (the keys go by environment).
"""
from __future__ import annotations

import os

DROPPED = ("--replicas", "--ray-address", "--models-per-replica", "--host", "--port")
PATHS = ("--base", "--adapters", "--keys", "--audit-log", "--cache-dir")


def _split(argv: list[str]) -> list[tuple[str, str | None, bool]]:
    """argv -> [(option or word, value or None, value given with '=')]. An option's value is the next word when it
    does not start with '--' (how argparse reads our options)."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") and "=" in a:
            name, _, v = a.partition("=")
            out.append((name, v, True))
        elif a.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.append((a, argv[i + 1], False))
            i += 1
        else:
            out.append((a, None, False))
        i += 1
    return out


def _join(parts) -> list[str]:
    out = []
    for name, v, eq in parts:
        out += [name] if v is None else ([f"{name}={v}"] if eq else [name, v])
    return out


def replica_argv(argv: list[str], max_cpu_loras: int, cwd: str | None = None) -> list[str]:
    cwd = cwd or os.getcwd()
    parts = []
    for name, v, eq in _split(list(argv)):
        if name.replace("_", "-") in DROPPED:
            continue
        if (name in PATHS and v is not None and not os.path.isabs(v)
                and (name != "--base" or os.path.exists(os.path.join(cwd, v)))):    # --base may be a hub id
            v = os.path.join(cwd, v)
        parts.append((name, v, eq))
    if not any(n.replace("_", "-") == "--max-cpu-loras" for n, _, _ in parts):
        parts.append(("--max-cpu-loras", str(max_cpu_loras), False))
    return _join(parts)


def with_audit_suffix(argv: list[str], tag: str) -> list[str]:
    return _join([(n, f"{v}.{tag}" if n == "--audit-log" and v is not None else v, eq) for n, v, eq in _split(argv)])


def without_key_flags(argv: list[str]) -> list[str]:
    """The keys travel in the replicas' environment, not on their command lines (other users see those)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0].replace("_", "-")
        if name in ("--api-key", "--admin-key", "--metrics-key"):
            skip = "=" not in a
            continue
        out.append(a)
    return out
