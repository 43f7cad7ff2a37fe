"""A GGUF checkpoint -> a plain transformers model folder (safetensors + tokenizer + chat template).

    gguf_architecture(path)              # "llama": read from the header, no model built
    convert_gguf(path, out, "float32")   # dequantize through transformers, save, reload and compare

transformers dequantizes a GGUF (`from_pretrained(folder, gguf_file=...)`, needs the `gguf` package) but
refuses to `save_pretrained` the result, so the weights move into a plain model built from its config
(minus `quantization_config`). Tied embeddings stay tied: the saved folder has no `lm_head` tensor.
"""
from __future__ import annotations

import struct
from pathlib import Path

SUPPORTED = {"llama": "LlamaForCausalLM"}     # GGUF general.architecture -> the transformers class verified here
DTYPES = ("float32", "bfloat16")

# GGUF value types (gguf-py constants.GGUFValueType) -> struct format of one scalar
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """A file that is not a GGUF we can convert (bad header, unsupported architecture, failed conversion)."""


def gguf_architecture(path: str | Path) -> str:
    """`general.architecture` from a GGUF header (little-endian v2/v3), scanning key/values in order."""
    path = Path(path)
    with open(path, "rb") as f:
        def take(n: int) -> bytes:
            b = f.read(n)
            if len(b) != n:
                raise GGUFError(f"{path}: truncated GGUF header")
            return b

        def unpack(fmt: str):
            return struct.unpack("<" + fmt, take(struct.calcsize(fmt)))[0]

        def string() -> str:
            return take(unpack("Q")).decode("utf-8", errors="replace")

        def skip(vtype: int) -> None:
            if vtype in _SCALAR:
                take(struct.calcsize(_SCALAR[vtype]))
            elif vtype == _STRING:
                take(unpack("Q"))
            elif vtype == _ARRAY:
                item, count = unpack("I"), unpack("Q")
                if item in _SCALAR:
                    take(struct.calcsize(_SCALAR[item]) * count)
                else:
                    for _ in range(count):
                        skip(item)
            else:
                raise GGUFError(f"{path}: unknown GGUF value type {vtype}")

        if f.read(4) != b"GGUF":
            raise GGUFError(f"{path}: not a GGUF file (its first bytes are not 'GGUF')")
        version = unpack("I")
        if version not in (2, 3):
            raise GGUFError(f"{path}: GGUF version {version} is not supported (2 or 3, little-endian)")
        _n_tensors, n_kv = unpack("Q"), unpack("Q")
        for _ in range(n_kv):
            key, vtype = string(), unpack("I")
            if key == "general.architecture":
                if vtype != _STRING:
                    raise GGUFError(f"{path}: general.architecture is not a string")
                return string()
            skip(vtype)
    raise GGUFError(f"{path}: GGUF header has no general.architecture")


def check_supported(path: str | Path) -> str:
    arch = gguf_architecture(path)
    if arch not in SUPPORTED:
        raise GGUFError(f"{Path(path).name}: GGUF architecture {arch!r} is not supported "
                        f"(supported: {', '.join(sorted(SUPPORTED))})")
    return arch


def convert_gguf(path: str | Path, out: str | Path, dtype: str = "float32", log=print) -> dict:
    """Write the GGUF at `path` as a transformers folder into `out` (which should be fresh: an atomic_dir temp).

    Returns the state dict that was saved (in `dtype`); raises GGUFError on any failure.
    After saving, the folder is reloaded with AutoModelForCausalLM and every tensor compared.
    """
    if dtype not in DTYPES:
        raise GGUFError(f"dtype {dtype!r} is not supported ({', '.join(DTYPES)})")
    path, out = Path(path), Path(out)
    check_supported(path)
    try:
        import gguf  # noqa: F401  (transformers imports it lazily and fails with a long message)
    except ImportError:
        raise GGUFError("reading GGUF needs the 'gguf' package: pip install gguf") from None
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tdtype = getattr(torch, dtype)
    try:
        log(f"  dequantizing {path.name} (transformers + gguf; about 30 s for 100 MB)")
        q = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        cfg_dict = q.config.to_dict()
        for k in ("quantization_config", "_name_or_path", "_model_name_or_path"):
            cfg_dict.pop(k, None)
        cfg_dict["dtype"] = dtype
        cfg = type(q.config).from_dict(cfg_dict)
        cls = getattr(transformers, SUPPORTED[cfg.model_type]) if cfg.model_type in SUPPORTED else None
        if cls is None:
            raise GGUFError(f"{path.name}: transformers built a {cfg.model_type!r} model (supported: {', '.join(sorted(SUPPORTED))})")
        sd = {k: v.to(tdtype) for k, v in q.state_dict().items()}
        del q
        log(f"  saving {dtype} safetensors + tokenizer")
        model = cls(cfg).to(tdtype)
        model.load_state_dict(sd, strict=True)
        if cfg.tie_word_embeddings:
            model.tie_weights()
        model.save_pretrained(out)
        tok.save_pretrained(out)
        del model
        log("  reloading the saved folder and comparing every tensor")
        back = AutoModelForCausalLM.from_pretrained(out, dtype=tdtype).state_dict()
    except GGUFError:
        raise
    except Exception as e:   # transformers/gguf failures: one line, the cause kept in the chain
        raise GGUFError(f"converting {path.name} failed: {type(e).__name__}: {e}".splitlines()[0]) from e
    bad = sorted(k for k in sd if k not in back or not torch.equal(back[k], sd[k]))
    if bad or set(back) != set(sd):
        raise GGUFError(f"{out}: the saved model does not reload as written (differs: {(bad or sorted(set(back) ^ set(sd)))[:3]})")
    if cfg.tie_word_embeddings and not torch.equal(back["lm_head.weight"], back["model.embed_tokens.weight"]):
        raise GGUFError(f"{out}: tied embeddings came back untied")
    if not (out / "chat_template.jinja").is_file():
        raise GGUFError(f"{path.name}: the GGUF carried no chat template")
    return sd
