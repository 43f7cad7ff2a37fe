"""Combining the replicas' answers to one request sent to all of them (pure functions).

    merge_metrics({tag: text}) -> one Prometheus text: each family's # HELP / # TYPE once, every sample of
        replica `tag` with the label replica="tag" added (first), so a scraper of the one endpoint sees each
        replica's gauges apart (llm-d's picker scores pods; behind Ray it is the replicas' sum or max you alert on).
    combine({tag: (status, body)}) -> (status, body): every replica's answer, and the worst status (all 2xx -> 200).
"""
from __future__ import annotations

import json
import re

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?(\s.*)$")


def _labelled(line: str, tag: str) -> str:
    m = _SAMPLE.match(line)
    if m is None:
        return line
    name, _, labels, rest = m.groups()
    if labels and re.search(r'(^|,)\s*replica=', labels):           # a label of its own: Prometheus' rule
        labels = re.sub(r'(^|,)(\s*)replica=', r'\1\2exported_replica=', labels, count=1)
    labels = f'replica="{tag}"' + (f",{labels}" if labels else "")
    return f"{name}{{{labels}}}{rest}"


def merge_metrics(texts: dict[str, str]) -> str:
    """Families keep the order in which they are first seen; a family's samples from every replica follow its
    HELP/TYPE lines (Prometheus' text format wants one block per family)."""
    order: list[str] = []
    heads: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for tag in sorted(texts):
        family = None
        for line in texts[tag].splitlines():
            if not line.strip():
                continue
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                family = line.split()[2]
                if family not in heads:
                    order.append(family)
                    heads[family], samples[family] = [], []
                if line not in heads[family]:
                    heads[family].append(line)
                continue
            if line.startswith("#"):
                continue
            if family is None:                      # a sample before any HELP/TYPE: its own family
                family = _SAMPLE.match(line).group(1) if _SAMPLE.match(line) else line
                if family not in heads:
                    order.append(family)
                    heads[family], samples[family] = [], []
            samples[family].append(_labelled(line, tag))
    out = []
    for family in order:
        out += heads[family] + samples[family]
    return "\n".join(out) + "\n"


def combine(answers: dict[str, tuple[int, bytes]]) -> tuple[int, dict]:
    """The body lists every replica's status and answer (JSON where it parses); the status is 200 when every
    replica answered 2xx, else the highest status any gave (a 4xx from one replica is the caller's mistake
    everywhere; a 5xx or 504 means one replica did not apply it)."""
    per = {}
    for tag, (status, body) in sorted(answers.items()):
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = body.decode(errors="replace")
        per[tag] = {"status": status, "body": parsed}
    statuses = [s for s, _ in answers.values()]
    status = 200 if statuses and all(200 <= s < 300 for s in statuses) else max(statuses, default=503)
    return status, {"replicas": per}
