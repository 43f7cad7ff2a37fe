"""Memory probe for `python -m bench.soak --memprobe` (a debugging aid for the soak, never part of the product).

The soak puts this folder first on PYTHONPATH of the server it starts, so Python imports this file at start-up in
every process of that server (API server, engine core, workers: vLLM spawns its engine processes, which inherit
the environment). With HYLORADA_MEMPROBE_DIR set, a daemon thread appends one JSON line every
HYLORADA_MEMPROBE_EVERY seconds (default 15) to DIR/<pid>.jsonl:

    rss / anon / file kB          /proc/self/status (VmRSS, RssAnon, RssFile)
    heap_kb, arena_maps_kb, ...   /proc/self/smaps Rss by kind: [heap] (glibc main arena), anonymous maps of at
                                  most 64 MiB (thread arenas, pymalloc arenas, mmapped chunks), larger anonymous
                                  maps (KV cache, weights), file-backed
    malloc                        glibc mallinfo2(): in_use (uordblks + hblkhd), free (fordblks: held by malloc,
                                  not in use), mmapped (hblkhd), arenas (heaps listed by malloc_info)
    py_blocks                     sys.getallocatedblocks() (Python-level leaks; no allocation to count them)
    gc_objects, types             every 8th sample: len(gc.get_objects()) and the 25 most common object types

When the file DIR/trim appears, each process records RSS and mallinfo before and after one malloc_trim(0)
(memory held free by malloc that the kernel gets back) in a line with "trim": true. Nothing here changes what
the server computes; the thread itself costs one smaps read per sample and one gc pass every 8th.
"""
import os

_DIR = os.environ.get("HYLORADA_MEMPROBE_DIR")


def _status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "Threads"):
                out[k] = int(v.split()[0])
    return {"rss_kb": out.get("VmRSS"), "anon_kb": out.get("RssAnon"), "file_kb": out.get("RssFile"),
            "threads": out.get("Threads")}


def _smaps() -> dict:
    kinds = {"heap_kb": 0, "arena_maps_kb": 0, "big_anon_kb": 0, "file_maps_kb": 0, "other_kb": 0, "anon_maps": 0}
    size = path = None
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(None, 6)
            if "-" in first[0] and len(first) >= 5 and ":" not in first[0]:
                a, b = first[0].split("-")
                size, path = (int(b, 16) - int(a, 16)) >> 10, (first[5].strip() if len(first) > 5 else "")
                if not path:
                    kinds["anon_maps"] += 1
                continue
            if first[0] == "Rss:":
                kb = int(first[1])
                if path == "[heap]":
                    kinds["heap_kb"] += kb
                elif not path:
                    kinds["arena_maps_kb" if size <= 65536 else "big_anon_kb"] += kb
                elif path.startswith("/"):
                    kinds["file_maps_kb"] += kb
                else:
                    kinds["other_kb"] += kb
    return kinds


_MALLINFO2 = None


def _malloc(libc) -> dict:
    import ctypes

    global _MALLINFO2
    if _MALLINFO2 is None:                  # one Structure class per process: a ctypes class is ~10 objects
        class MallInfo2(ctypes.Structure):  # that live forever (one per sample showed up as growth)
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]
        _MALLINFO2 = MallInfo2
    libc.mallinfo2.restype = _MALLINFO2
    m = libc.mallinfo2()
    out = {"in_use_kb": (m.uordblks + m.hblkhd) >> 10, "free_kb": m.fordblks >> 10, "mmapped_kb": m.hblkhd >> 10,
           "sbrk_and_arenas_kb": m.arena >> 10, "top_releasable_kb": m.keepcost >> 10}
    try:                                   # number of arenas: malloc_info's <heap nr=...> entries
        import tempfile
        with tempfile.NamedTemporaryFile("r", suffix=".xml") as t:
            libc.fopen.restype = ctypes.c_void_p
            fp = libc.fopen(t.name.encode(), b"w")
            libc.malloc_info(0, ctypes.c_void_p(fp))
            libc.fclose(ctypes.c_void_p(fp))
            out["arenas"] = t.read().count("<heap nr=")
    except Exception:                      # noqa: BLE001 - a probe must never hurt the process
        pass
    return out


def _loop() -> None:
    import ctypes
    import gc
    import json
    import sys
    import time

    libc = ctypes.CDLL("libc.so.6")
    every = float(os.environ.get("HYLORADA_MEMPROBE_EVERY", "15"))
    path, trim_flag, trimmed, k, next_t = os.path.join(_DIR, f"{os.getpid()}.jsonl"), os.path.join(_DIR, "trim"), \
        False, 0, 0.0
    while True:
        try:
            now = time.time()
            rec = None
            if not trimmed and os.path.exists(trim_flag):
                before = {**_status(), **_malloc(libc)}
                libc.malloc_trim(0)
                rec, trimmed = {"trim": True, "before": before, "after": {**_status(), **_malloc(libc)}}, True
            elif now >= next_t:
                next_t = now + every
                with open("/proc/self/comm") as f:
                    comm = f.read().strip()
                rec = {"comm": comm, **_status(), **_smaps(), "malloc": _malloc(libc),
                       "py_blocks": sys.getallocatedblocks()}
                if k % 8 == 0:              # a list of every object: a big allocation, so not every sample
                    from collections import Counter
                    objs = gc.get_objects()
                    rec["gc_objects"] = len(objs)
                    rec["types"] = Counter(type(o).__name__ for o in objs).most_common(25)
                    del objs
                k += 1
            if rec is not None:
                rec["t"] = round(now, 2)
                with open(path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
        except Exception as e:             # noqa: BLE001 - a probe must never hurt the process
            try:
                with open(path, "a") as f:
                    f.write(json.dumps({"t": time.time(), "error": repr(e)[:300]}) + "\n")
            except OSError:
                pass
            time.sleep(every)
        time.sleep(1.0)


if _DIR:
    import threading

    threading.Thread(target=_loop, name="hylorada-memprobe", daemon=True).start()
