"""The one way a `hylorada` verb that writes a folder reports: `wrote PATH` and exit 0, or one line
`hylorada VERB: error: REASON` (the file, tensor and reason of an AdapterError) and exit 1 — never a traceback
for bad input. (OSError — disk full, permissions — is turned into one line by hylorada/cli.py for every verb.)"""
from __future__ import annotations

from typing import Callable

from hylorada.format.atomic import OutputExistsError
from hylorada.format.layout import AdapterError


def report_written(verb: str, write: Callable[[], object]) -> int:
    try:
        out = write()
    except (AdapterError, OutputExistsError) as e:
        print(f"hylorada {verb}: error: {e}")
        return 1
    print(f"wrote {out}")
    return 0
