"""Child script of test_orphans.py: an engine core stand-in that starts one worker and reports its pid.

    python orphans_child.py {patched|stock|late} NAME

Forks a multiprocessing child named NAME (a vLLM worker is `VllmWorker-<rank>`) that calls orphans.install()
(`patched`) or not (`stock`), then sleeps; `late`: the child reports first and calls install() only once this
process (its parent) is gone, the race install() closes by ending itself. Prints one JSON line once the child is running: its pid, what install()
returned and the child's parent-death signal; then sleeps until killed (the test SIGKILLs this process).
"""
import json
import multiprocessing as mp
import os
import sys
import time


def worker(mode: str, ready) -> None:
    from hylorada_patches import orphans
    if mode == "late":                                   # the engine core dies before this worker's install
        ready.send((None, 0))
        parent, deadline = mp.parent_process().pid, time.time() + 10
        while os.getppid() == parent and time.time() < deadline:
            time.sleep(0.02)
        orphans.install()
        time.sleep(120)
        return
    done = orphans.install() if mode == "patched" else False
    ready.send((done, orphans.death_signal()))
    time.sleep(120)                                      # bounded: a stock orphan still ends on its own


if __name__ == "__main__":
    mode, name = sys.argv[1], sys.argv[2]
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=worker, args=(mode, send), name=name, daemon=False)
    proc.start()
    done, sig = recv.recv()
    print(json.dumps({"pid": proc.pid, "installed": done, "death_signal": sig}), flush=True)
    time.sleep(120)
