"""bench/ stands alone: no module imports the test suite (tests import bench, never the other way round)."""
from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_bench_never_imports_tests():
    bad = []
    for f in sorted(BENCH.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{f.relative_to(BENCH.parent)}: {n}" for n in names if n == "tests" or n.startswith("tests.")]
    assert bad == []
    assert "sys.path" not in "".join(f.read_text() for f in BENCH.rglob("*.py"))
