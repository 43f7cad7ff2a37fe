"""`--keys FILE`: tenants, their keys (SHA-256 digests only), the adapters each may use and its limits.

    # tenants.toml (JSON: the same structure, {"tenants": {"team-a": {...}}})
    [tenants.team-a]
    keys = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]   # sha256 of each key, hex
    adapters = ["team-a-*", "shared-summary"]   # exact names, or PREFIX* (a prefix then one final *)
    base = true                  # may use the base model (default true)
    requests_per_second = 5      # token bucket, burst = max(1, rate); absent or 0: no limit
    tokens_per_minute = 20000    # generated tokens in any 60 s; absent or 0: no limit
    concurrent = 4               # requests running at once; absent or 0: no limit
    admin = false                # may load / reload / unload (and list) its own adapters

A key's digest: `printf %s "$KEY" | sha256sum` (or `python -m hylorada_serve.keys digest`, reading the key from
stdin). Hex digits in either case are accepted; several keys per tenant let a key be rotated without a gap. Every
field is checked; an unknown field is an error (a typo such as `request_per_second` must not silently lift a limit);
`all_adapters = true` is the only way to allow every adapter (`*` alone is refused). Errors name the file and line.

Lookup is by digest (`KeyTable.tenant_for`): a presented key is hashed once and its digest looked up, so the time
taken depends on the digest of what was sent, which an attacker cannot steer toward a stored digest (finding a key
from its digest is a SHA-256 preimage); no stored key material is ever compared byte by byte.

    python -m hylorada_serve.keys digest < keyfile     # the digest to write into `keys`
    python -m hylorada_serve.keys check tenants.toml   # validate a file; exit 1 with the errors
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .scan import NAME_RE

MAX_FILE_BYTES = 16 << 20
MAX_KEYS = 100_000
MAX_PROBLEMS = 100                  # an error lists at most this many (a 16 MiB file of mistakes stays cheap)
MAX_LIMIT = 1e12
MIN_RATE = 1e-3                     # requests per second: one per ~17 minutes; below that Retry-After is meaningless
EMPTY_KEY = hashlib.sha256(b"").hexdigest()     # what `printf %s "$KEY" | sha256sum` prints when KEY is unset
TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\*\Z")
DIGEST_RE = re.compile(r"[0-9a-fA-F]{64}\Z")
FIELDS = {"keys", "adapters", "all_adapters", "base", "admin", "requests_per_second", "tokens_per_minute",
          "concurrent"}


class KeysFileError(ValueError):
    """The keys file cannot be used; `problems` are 'FILE:LINE: message' lines."""

    def __init__(self, problems: list[str]):
        self.problems = tuple(problems)
        super().__init__("invalid keys file:\n  " + "\n  ".join(self.problems))


@dataclass(frozen=True)
class Tenant:
    """One tenant: who may use what, and how much. Limits of 0 mean none."""
    name: str
    adapters: tuple[str, ...] = ()      # exact names
    prefixes: tuple[str, ...] = ()      # from PREFIX* patterns, without the *
    all_adapters: bool = False
    base: bool = True
    admin: bool = False
    requests_per_second: float = 0.0
    tokens_per_minute: int = 0
    concurrent: int = 0

    def allows(self, adapter: str) -> bool:
        """May this tenant use (and see) adapter `adapter`?"""
        return self.all_adapters or adapter in self.adapters or any(adapter.startswith(p) for p in self.prefixes)


@dataclass(frozen=True)
class KeyTable:
    """digest (32 bytes) -> Tenant, from one keys file."""
    by_digest: dict
    tenants: tuple[Tenant, ...]
    source: str

    def tenant_for(self, digest: bytes) -> Tenant | None:
        return self.by_digest.get(digest)


def digest_hex(key: str | bytes) -> str:
    return hashlib.sha256(key if isinstance(key, bytes) else key.encode()).hexdigest()


def load(path: str | Path) -> KeyTable:
    """Read and check a keys file (TOML, or JSON by its .json suffix). Raises KeysFileError listing every problem."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise KeysFileError([f"{p}: larger than {MAX_FILE_BYTES >> 20} MiB"])
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KeysFileError([f"{p}: cannot be read ({e.__class__.__name__}: {e})"]) from None
    try:
        return parse(text, str(p), json_format=p.suffix.lower() == ".json")
    except KeysFileError:
        raise
    except Exception as e:                              # never a traceback for a file's content
        raise KeysFileError([f"{p}: cannot be used ({type(e).__name__}: {str(e)[:200]})"]) from None


def parse(text: str, source: str = "<keys>", json_format: bool = False) -> KeyTable:
    where = _Locator(text, source)
    try:
        doc = _json(text) if json_format else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as e:
        line = getattr(e, "lineno", None) or _toml_line(str(e))
        raise KeysFileError([f"{where.at(line)}: not valid {'JSON' if json_format else 'TOML'} ({e})"]) from None
    problems: list[str] = []
    if not isinstance(doc, dict) or set(doc) - {"tenants"} or not isinstance(doc.get("tenants", {}), dict):
        extra = sorted(set(doc) - {"tenants"}) if isinstance(doc, dict) else []
        raise KeysFileError([f"{where.at(1)}: the file holds one table, `tenants` (name -> tenant)"
                             + (f"; unknown top-level key(s) {extra}" if extra else "")])
    tenants, by_digest, owner = [], {}, {}
    for name, entry in doc.get("tenants", {}).items():
        if len(problems) >= MAX_PROBLEMS:
            problems.append(f"{source}: … and more problems (the first {MAX_PROBLEMS} are listed)")
            break
        t, digests = _tenant(name, entry, where, problems)
        for d in digests:
            if d in owner:
                problems.append(f"{where.find(name, d.hex()[:16])}: tenant {name!r}: key {d.hex()[:12]}… is "
                                f"already tenant {owner[d]!r}'s (one key, one tenant)")
                continue
            owner[d] = name
            if t is not None:
                by_digest[d] = t
        if t is not None:
            tenants.append(t)
        if len(by_digest) > MAX_KEYS:
            problems.append(f"{where.at(None)}: more than {MAX_KEYS} keys")
            break
    if problems:
        raise KeysFileError(problems)
    return KeyTable(by_digest, tuple(tenants), source)


def _tenant(name, entry, where: "_Locator", problems: list[str]) -> tuple[Tenant | None, list[bytes]]:
    n0 = len(problems)
    bad = lambda field, msg, value=None: problems.append(   # noqa: E731
        f"{where.find(name, value if value is not None else field)}: tenant {name!r}: {field}: {msg}")
    if not isinstance(name, str) or not TENANT_RE.match(name):
        problems.append(f"{where.find(str(name))}: tenant name {name!r} must match {TENANT_RE.pattern[:-2]}")
        return None, []
    if not isinstance(entry, dict):
        problems.append(f"{where.find(name)}: tenant {name!r} must be a table of fields")
        return None, []
    for f in sorted(set(entry) - FIELDS):
        bad(f, f"unknown field (known: {', '.join(sorted(FIELDS))})")
    digests = []
    keys = entry.get("keys")
    if not isinstance(keys, list) or not keys:
        bad("keys", "a non-empty list of SHA-256 digests (64 hex digits each) is required")
        keys = []
    for i, k in enumerate(keys):
        if isinstance(k, str) and k.lower() == EMPTY_KEY:
            bad(f"keys[{i}]", "the digest of the empty key (was the key variable unset when it was hashed?)", k)
        elif not isinstance(k, str) or not DIGEST_RE.match(k):
            shown = f"{len(k)} characters" if isinstance(k, str) else type(k).__name__
            bad(f"keys[{i}]", f"not a SHA-256 digest: 64 hex digits, as `sha256sum` prints (got {shown}); "
                              "write the digest, never the key", k if isinstance(k, str) and k else None)
        else:
            digests.append(bytes.fromhex(k))
    exact, prefixes = [], []
    pats = entry.get("adapters", [])
    if not isinstance(pats, list):
        bad("adapters", "a list of adapter names or PREFIX* patterns")
        pats = []
    for i, pat in enumerate(pats):
        if not isinstance(pat, str) or not pat:
            bad(f"adapters[{i}]", "an empty pattern matches nothing: remove it")
        elif pat == "*":
            bad(f"adapters[{i}]", "`*` alone would allow every adapter: write `all_adapters = true` if you mean it")
        elif pat.endswith("*") and PREFIX_RE.match(pat):
            prefixes.append(pat[:-1])
        elif NAME_RE.match(pat):
            exact.append(pat)
        else:
            bad(f"adapters[{i}]", f"{pat!r} is neither an adapter name ([A-Za-z0-9][A-Za-z0-9._-]{{0,63}}) nor "
                                  "PREFIX* (a name prefix then one final *; no regex, no paths)", pat)
    flags = {}
    for f, default in (("all_adapters", False), ("base", True), ("admin", False)):
        v = entry.get(f, default)
        if not isinstance(v, bool):
            bad(f, f"true or false (got {v!r})")
        flags[f] = v is True
    limits = {}
    for f, kind in (("requests_per_second", float), ("tokens_per_minute", int), ("concurrent", int)):
        v = entry.get(f, 0)
        try:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= MAX_LIMIT
            ok = ok and (kind is float or v == int(v)) and (f != "requests_per_second" or v == 0 or v >= MIN_RATE)
        except OverflowError:                           # an integer too large for a float
            ok = False
        if not ok:
            shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:40] + "…"
            bad(f, f"a {'number' if kind is float else 'whole number'} in 0..{MAX_LIMIT:g}"
                   f"{f' (0, or at least {MIN_RATE:g})' if f == 'requests_per_second' else ''}; 0 or absent: no limit "
                   f"(got {shown})")
            v = 0
        limits[f] = kind(v)
    if len(problems) > n0:
        return None, digests
    return Tenant(name, tuple(exact), tuple(prefixes), **flags, **limits), digests


def _json(text: str):
    def no_duplicates(pairs):
        seen = {}
        for k, v in pairs:
            if k in seen:
                raise ValueError(f"duplicate key {k!r}")
            seen[k] = v
        return seen
    return json.loads(text, object_pairs_hook=no_duplicates)


def _toml_line(message: str) -> int | None:
    m = re.search(r"line (\d+)", message)
    return int(m.group(1)) if m else None


class _Locator:
    """'FILE:LINE' for error messages: the line of a tenant's header (TOML `[tenants.NAME]`, JSON `"NAME":`), then
    the first line after it holding a field name or a value."""

    def __init__(self, text: str, source: str):
        self.lines, self.source = text.splitlines(), source

    def at(self, line: int | None) -> str:
        return f"{self.source}:{line}" if line else self.source

    def find(self, tenant: str, needle: str | None = None) -> str:
        t = re.escape(tenant)
        q = "[\"']?"
        header = re.compile(rf"\s*\[\s*tenants\s*\.\s*{q}{t}{q}\s*\]|\s*{q}{t}{q}\s*=|.*\"{t}\"\s*:")
        start = next((i for i, ln in enumerate(self.lines) if header.match(ln)), None)
        if start is None:
            return self.at(None)
        if needle:
            key = needle.split("[", 1)[0]
            for i in range(start, len(self.lines)):
                if i > start and re.match(r"\s*\[", self.lines[i]) and "tenants" in self.lines[i]:
                    break                                   # the next tenant's header
                if needle in self.lines[i] or re.match(rf'\s*"?{re.escape(key)}"?\s*[=:]', self.lines[i]):
                    return self.at(i + 1)
        return self.at(start + 1)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["digest"] and len(args) == 1:
        key = sys.stdin.read().rstrip("\r\n")
        if not key:
            print("no key on stdin", file=sys.stderr)
            return 2
        print(digest_hex(key))
        return 0
    if args[:1] == ["check"] and len(args) == 2:
        try:
            t = load(args[1])
        except KeysFileError as e:
            print(e, file=sys.stderr)
            return 1
        print(f"{args[1]}: {len(t.tenants)} tenants, {len(t.by_digest)} keys")
        return 0
    print(__doc__.split("\n\n")[-1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
