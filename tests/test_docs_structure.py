"""docs/structure.md stays true: every module of the four packages has its line, and every module a line names
exists (a renamed or removed module fails here until the map is updated)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"hylorada": "## hylorada/", "patches": "## patches/", "hylorada_serve": "## hylorada_serve/", "bench": "## bench/"}
SKIP = {"__init__.py", "__main__.py"}


def sections() -> dict[str, str]:
    text = (ROOT / "docs/structure.md").read_text()
    out = {}
    for pkg, head in PACKAGES.items():
        start = text.index(head)
        nxt = text.find("\n## ", start + 1)
        out[pkg] = text[start:nxt if nxt > 0 else None]
    return out


def named(section: str) -> set[str]:
    """Backticked *.py tokens at the start of bullet lines (`a.py`, `b.py` — ... also counts b.py)."""
    names = set()
    for line in section.splitlines():
        if line.startswith("- "):
            head = line.split(" — ")[0]
            names |= set(re.findall(r"`([\w/]+\.py)`", head))
    return names


def test_every_module_has_its_line_and_every_line_a_module():
    for pkg, section in sections().items():
        root = ROOT / pkg
        mods = {p.relative_to(root).as_posix() for p in root.rglob("*.py")
                if (p.name not in SKIP or (pkg == "patches" and p.parent == root and p.name == "__init__.py"))
                and "results" not in p.relative_to(root).parts}          # bench/results/: the scripts of a record
        doc = named(section)
        # a line names a module by its path inside the package, or by its name under a `sub/` heading
        missing = sorted(m for m in mods if m not in doc and Path(m).name not in doc)
        assert not missing, f"{pkg}: modules without a line in docs/structure.md: {missing}"
        basenames = {Path(m).name for m in mods}
        stale = sorted(d for d in doc if d not in mods and Path(d).name not in basenames)
        assert not stale, f"{pkg}: docs/structure.md names modules that do not exist: {stale}"
