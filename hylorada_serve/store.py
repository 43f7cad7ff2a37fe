"""Hot-swap bookkeeping for the adapters in DIR/: which folders exist, which are complete, which version of
each one serves, and when a replaced version may be freed. No vLLM, no I/O (scan.py looks at the disk).

Life of an adapter folder DIR/name:

    seen ──(complete)──> loading ──(staged, validated, engine accepted)──> ready (version n)
      │                     └──(any check fails)──> refused (same content never retried; a change retries;
      │                                             no room on disk for the private copy: retried every RETRY_S)
      └─ folder changes again: back to waiting; the serving version keeps serving until the new one is ready
    ready ──(folder removed / admin unload)──> removed / unloaded (new requests 404; running ones finish)

Completion rule (a folder being copied is never loaded half-written). A folder is complete when either
  * it holds a `.ready` file whose mtime is >= every other file's mtime (the writer's "done" marker, written
    last), or
  * its signature — (relative path, size, mtime_ns) of every file — has not changed for `stable_seconds`
    of the server's clock (default 2 s), judged across polls.
Writers that publish with one rename (hylorada.format.atomic.atomic_dir) are complete either way.

The look at the disk (names, signatures, scan bounds) is scan.py; this class only keeps the books.

Versions. Every version that serves gets the next number (per name, never reused; a refused or abandoned load
takes none, so v1, v2, v3 are the versions clients saw) and every load a new global uid (vLLM's lora_int_id); each
is served from its own published copy (DESIGN.md §6: prefix-cache keys include
(lora_name, lora_path), so nothing is ever overwritten in place).

Admission. Each request takes a Ticket: the served mapping at that instant plus its generation. The request
resolves its adapter from the ticket, so a swap after admission does not change what it runs on. A
retired version is collectable (engine slot and files freed) once no ticket older than its retirement is open.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .scan import NAME_RE, Seen, Signature, marker_complete, observe

@dataclass(frozen=True)
class Version:
    """One published, engine-accepted copy of DIR/name."""
    name: str
    number: int                     # 1, 2, 3 ... per name
    uid: int                        # globally unique (vLLM lora_int_id), >= 1
    path: str                       # the published copy vLLM reads (never the watched folder)
    signature: Signature            # of the source folder when it was copied
    kind: str = "lora"
    rank: int = 0
    size_bytes: int = 0
    loaded_at: float = 0.0
    load_seconds: float = 0.0       # copy + validate + engine add_lora
    handle: Any = field(default=None, compare=False)    # opaque to the store (the server keeps its LoRARequest)

    @property
    def engine_name(self) -> str:
        """The name vLLM sees: unique per version (vLLM's LoRARequest equality is by name)."""
        return f"{self.name}@v{self.number}"


@dataclass
class Entry:
    name: str
    status: str = "waiting"         # waiting | loading | ready | refused | removed | unloaded
    reason: str | None = None
    current: Version | None = None
    seen_sig: Signature | None = None
    seen_since: float = 0.0
    refused_sig: Signature | None = None
    retry_at: float | None = None   # store clock after which refused_sig is tried again (a transient refusal:
    #                                 no room on disk); None: that content is never retried
    held: bool = False              # admin unload: not reloaded by the watcher until an explicit load
    blocked: bool = False           # the name itself is refused (bad characters, case clash, outside link)
    last_number: int = 0            # the number of the newest version that served (0: none yet)
    loading_uid: int = 0            # the uid of the load in flight (begin_load); a load whose uid differs was
    #                                 superseded
    since: float = 0.0              # wall time the current status began (time.time())
    removed_at: float = 0.0         # store clock at the last remove() (for forgetting removed names)
    events: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class Ticket:
    gen: int
    mapping: dict                   # name -> Version, frozen by convention (the store never mutates it)


class AdapterStore:
    """Bookkeeping for DIR/. Single-threaded: call from one event loop (the server's); only `observe` (no books)
    runs elsewhere."""

    def __init__(self, root: str | Path, stable_seconds: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 forget_seconds: float = 300.0):
        self.root = Path(root)
        self.stable_seconds = stable_seconds
        self.forget_seconds = forget_seconds     # a removed name is dropped from the books after this long
        self.new_refusals: list[tuple[str, str]] = []    # (name, reason) refused by scan; the watcher logs them
        self.clock = clock
        self.on_forget: Callable[[str], None] = lambda name: None   # called for each name _forget drops
        self.entries: dict[str, Entry] = {}
        self._mapping: dict[str, Version] = {}
        self._gen = 0
        self._next_uid = 1
        self._open: Counter = Counter()          # gen -> open tickets
        self._retired: list[tuple[Version, int]] = []   # (version, generation at which it left the mapping)

    # ---- scanning ------------------------------------------------------------------------------------------
    def scan(self) -> tuple[list[str], list[str]]:
        """Look at DIR/ once (`observe`, here on the caller's thread) and apply it."""
        return self.apply(observe(self.root))

    def apply(self, seen: list[Seen] | None, only=None) -> tuple[list[str], list[str]]:
        """Apply one look at DIR/ (`observe`). Returns (names complete and ready to load, names whose folder is gone).
        With `only` (the names a partial look covered, observe(root, only)), the books of other names stand: a
        name of `only` not seen is gone, and the case rule compares with the other names the books hold present.

        A missing DIR/ itself (seen None) is treated as a transient (unmounted) state: nothing is removed.
        """
        if seen is None:
            return [], []
        now = self.clock()
        only = None if only is None else set(only)
        # names already serving first, so a later case-clashing folder never displaces them
        seen = sorted(seen, key=lambda s: (s.name not in self.entries or self.entries[s.name].current is None, s.name))
        to_load, present = [], set()
        lowered = {} if only is None else {n.lower(): n for n, e in self.entries.items()
                                           if n not in only and e.status != "removed" and not e.blocked}
        for s in seen:
            n = s.name
            present.add(n)
            e = self.entries.setdefault(n, Entry(n))
            e.blocked = False
            if not NAME_RE.fullmatch(n):
                self._refuse_quietly(e, "name must match [A-Za-z0-9][A-Za-z0-9._-]{0,63} (and nothing after it)")
                continue
            if n.lower() in lowered:
                self._refuse_quietly(e, f"name differs only by case from '{lowered[n.lower()]}'")
                continue
            lowered[n.lower()] = n
            if s.outside_link:
                self._refuse_quietly(e, "symlink pointing outside the adapters folder")
                continue
            if e.held or e.status == "loading":
                continue
            if s.over is not None:
                self._refuse_content(e, s.over)
                continue
            sig = s.signature
            if sig is None:
                continue
            if sig != e.seen_sig:
                e.seen_sig, e.seen_since = sig, now
            if e.current is not None and sig == e.current.signature:
                continue
            if sig == e.refused_sig and (e.retry_at is None or now < e.retry_at):
                continue
            if marker_complete(sig) or now - e.seen_since >= self.stable_seconds:
                to_load.append(n)
            elif e.current is None:
                e.status, e.reason = "waiting", "folder changed recently; waiting until it is stable"
        gone = [n for n, e in self.entries.items() if (only is None or n in only) and (
                (n not in present and e.status in ("ready", "waiting", "refused", "unloaded"))
                or (e.blocked and e.current is not None))]
        if only is None:
            self._forget(present, now)
        return to_load, gone

    def waiting_on_time(self) -> bool:
        """True while some folder's next step comes with time alone, not with a change on disk: seen changed and
        not yet complete by the stable rule (no `.ready` marker), or refused for a transient cause and due for a
        retry. The watcher scans at its polling interval while this holds; with file events, only now and then
        otherwise (an unchanged folder sends no event)."""
        for e in self.entries.values():
            if e.held or e.blocked or e.status == "loading" or e.seen_sig is None:
                continue
            if e.current is not None and e.seen_sig == e.current.signature:
                continue
            if e.seen_sig == e.refused_sig and e.retry_at is None:
                continue
            return True
        return False

    def _forget(self, present: set, now: float) -> None:
        """Drop names removed at least forget_seconds ago whose folder is still gone and that no admitted
        request can still resolve (no retired version pending), so the books stay bounded under churn.
        A name that comes back later starts again at version 1 (with a new uid and published path)."""
        pinned = {v.name for v, _ in self._retired}
        for n in [n for n, e in self.entries.items() if e.status == "removed" and n not in present
                  and n not in pinned and now - e.removed_at >= self.forget_seconds]:
            del self.entries[n]
            self.on_forget(n)

    def _refuse_quietly(self, e: Entry, reason: str) -> None:
        e.blocked = True
        if e.status != "refused" or e.reason != reason:
            e.status, e.reason = "refused", reason
            e.events["refused"] += 1
            self.new_refusals.append((e.name, reason))

    def _refuse_content(self, e: Entry, reason: str) -> None:
        """A folder over a scan bound: refused like content that failed to load (a serving version keeps
        serving); reported once per reason. Fixed content gets a new signature and loads again."""
        e.seen_sig = None
        if e.reason != reason:
            e.status, e.reason = ("ready" if e.current is not None else "refused"), reason
            e.events["refused"] += 1
            self.new_refusals.append((e.name, reason))

    def abandon(self, name: str, reason: str | None = None) -> None:
        """A load that ended without a verdict (folder changed while copying, unloaded meanwhile, cancelled):
        back to serving the current version, or waiting; the same content may be tried again."""
        e = self.entries.get(name)
        if e is not None and e.status == "loading":
            e.status, e.reason = ("ready" if e.current is not None else "waiting"), reason

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def begin_load(self, name: str) -> tuple[int, int, Signature | None]:
        """Mark `name` loading and allocate a uid; the version number it will serve as is the next one, taken only
        by `commit` (a refused or abandoned load uses none). Returns (number, uid, the signature the last scan
        saw)."""
        e = self.entries.setdefault(name, Entry(name))
        e.status, e.reason, e.held = "loading", None, False
        uid, self._next_uid = self._next_uid, self._next_uid + 1
        e.loading_uid = uid
        return e.last_number + 1, uid, e.seen_sig

    def commit(self, version: Version) -> Version | None:
        """`version` now serves `version.name`. Returns the version it replaced (retired, freed later)."""
        e = self.entries[version.name]
        old = e.current
        e.last_number = max(e.last_number, version.number)
        e.current, e.status, e.reason, e.refused_sig, e.retry_at = version, "ready", None, None, None
        e.since = time.time()
        e.events["loaded"] += 1
        self._publish({**self._mapping, version.name: version}, old)
        return old

    def refuse(self, name: str, signature: Signature | None, reason: str, retry_s: float | None = None) -> bool:
        """The load failed. The current version (if any) keeps serving; this content is not retried, or, with
        `retry_s` (a transient cause: no room on disk), tried again once that long has passed. Returns True when
        this is news (counted in events and worth a warning): not the same content refused again on a retry."""
        e = self.entries.setdefault(name, Entry(name))
        again = retry_s is not None and e.retry_at is not None and signature == e.refused_sig
        e.refused_sig, e.reason = signature, reason
        e.retry_at = None if retry_s is None else self.clock() + retry_s
        e.status = "ready" if e.current is not None else "refused"
        if not again:
            e.events["refused"] += 1
        return not again

    def remove(self, name: str, status: str = "removed") -> Version | None:
        """Stop serving `name` (folder gone, or admin unload with status='unloaded')."""
        e = self.entries.get(name)
        if e is None:
            return None
        old, e.current, e.status, e.reason = e.current, None, status, None
        e.since, e.removed_at = time.time(), self.clock()
        e.held = status == "unloaded"
        if status == "removed":
            e.seen_sig = e.refused_sig = e.retry_at = None
        e.events[status] += 1
        if old is not None:
            self._publish({k: v for k, v in self._mapping.items() if k != name}, old)
        return old

    def _publish(self, mapping: dict, retired: Version | None) -> None:
        self._mapping = mapping
        self._gen += 1
        if retired is not None:
            self._retired.append((retired, self._gen))

    # ---- admission -----------------------------------------------------------------------------------------
    def admit(self) -> Ticket:
        self._open[self._gen] += 1
        return Ticket(self._gen, self._mapping)

    def release(self, ticket: Ticket) -> None:
        self._open[ticket.gen] -= 1
        if self._open[ticket.gen] <= 0:
            del self._open[ticket.gen]

    def collectable(self) -> list[Version]:
        """Retired versions no open ticket can still resolve to; removed from the store's books."""
        oldest = min(self._open) if self._open else self._gen + 1
        free = [v for v, g in self._retired if g <= oldest]
        self._retired = [(v, g) for v, g in self._retired if g > oldest]
        return free

    def retired_count(self) -> int:
        return len(self._retired)

    # ---- views ---------------------------------------------------------------------------------------------
    def serving(self) -> dict[str, Version]:
        return self._mapping

    def status(self) -> list[dict]:
        out = []
        for n, e in sorted(self.entries.items()):
            v = e.current
            out.append({"name": n, "status": e.status, "reason": e.reason,
                        "version": v.number if v else None, "engine_name": v.engine_name if v else None,
                        "uid": v.uid if v else None, "path": v.path if v else None,
                        "kind": v.kind if v else None, "rank": v.rank if v else None,
                        "size_bytes": v.size_bytes if v else None,
                        "load_ms": round(v.load_seconds * 1e3, 1) if v else None, "since": e.since, "events": dict(e.events)})
        return out
