"""An engine worker dies with its engine core: PR_SET_PDEATHSIG(SIGKILL) in every vLLM worker process.

vLLM 0.32's engine core starts its model workers (multiproc executor, process name `VllmWorker-<rank>`) and, when
it exits normally, stops them itself. When the engine core is killed, a worker only learns it from a death pipe:
its monitor thread shuts the worker's queues down and the worker then runs its own shutdown, which can take long
or not end — a fresh clone's CI run saw a worker and its resource tracker still alive 15 s after hylorada-serve had
exited on the engine's death (tests/serve/test_engine_death.py), holding the model's memory and cores; a
supervisor restarting the server would have started a second engine next to it.

So the plugin, in a worker process only, asks the kernel to SIGKILL the worker the moment its parent (the engine
core that started it, from its main thread) exits. A worker whose engine core is gone has nothing left to
serve or save. The engine core and the API server are not touched: the API server's parent is whatever
started hylorada-serve (a shell, a supervisor), and a server must outlive a shell it was started from.
If the engine core died before the prctl, the worker already lost its parent and kills itself at once.
Linux only (elsewhere: nothing, vLLM's death pipe as before).
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys

PR_SET_PDEATHSIG, PR_GET_PDEATHSIG = 1, 2
WORKER_PREFIX = "VllmWorker-"          # multiproc_executor.WorkerProc.make_worker_process names them so


def is_worker() -> bool:
    """This process is a vLLM model worker started by an engine core (a multiprocessing child of that name)."""
    return (multiprocessing.parent_process() is not None
            and multiprocessing.current_process().name.startswith(WORKER_PREFIX))


def death_signal() -> int:
    """The signal this process gets when its parent exits (0: none), from prctl(PR_GET_PDEATHSIG)."""
    sig = ctypes.c_int(0)
    ctypes.CDLL(None, use_errno=True).prctl(PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0)
    return sig.value


def install() -> bool:
    """In a worker on Linux: SIGKILL on the engine core's exit (True). Anywhere else: nothing (False)."""
    if not sys.platform.startswith("linux") or not is_worker():
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False                                 # refused (not expected on Linux): vLLM's death pipe only
    if os.getppid() != multiprocessing.parent_process().pid:
        os.kill(os.getpid(), signal.SIGKILL)         # the engine core exited before the prctl above
    return True
