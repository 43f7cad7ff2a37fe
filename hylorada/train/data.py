"""Training text -> fixed-length token blocks, and a deterministic batch order (so resume is exact).

    FILE.txt     one document (the whole file)
    FILE.jsonl   one JSON object per line with a "text" field (other fields ignored)

Documents are tokenised, each followed by EOS, concatenated and cut into blocks of seq_len
tokens (the tail shorter than a block is dropped). Batch b of epoch e is a fixed slice of a
permutation seeded by (seed, e): batches_for(step) depends only on the step number.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor


class DataError(ValueError):
    """A training file that cannot be used (names the file and line)."""


def read_texts(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    if p.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{n}: not JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise DataError(f'{p}:{n}: expected an object with a string "text" field')
            texts.append(obj["text"])
        return texts
    if p.suffix == ".txt":
        return [p.read_text(encoding="utf-8")]
    raise DataError(f"{p}: expected a .txt or .jsonl file")


def token_blocks(texts: list[str], tokenizer, seq_len: int) -> Tensor:
    """-> LongTensor [N, seq_len]: the documents' tokens (+ EOS after each), cut into blocks."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    n = len(ids) // seq_len
    if n == 0:
        raise DataError(f"only {len(ids)} tokens: not one block of --seq-len {seq_len}")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def load_blocks(path: str | Path, tokenizer, seq_len: int) -> Tensor:
    return token_blocks(read_texts(path), tokenizer, seq_len)


def batch_indices(step: int, num_blocks: int, batch_size: int, seed: int = 0) -> Tensor:
    """Block indices [batch_size] for global step `step` (0-based), as a pure function of the step.

    Semantics: epoch e = step // steps_per_epoch uses torch.randperm(num_blocks) seeded by seed*1000003+e;
    batch k of the epoch is perm[k*bs:(k+1)*bs] (wrapping around when batch_size > num_blocks).
    """
    per_epoch = max(1, num_blocks // batch_size)
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    perm = torch.randperm(num_blocks, generator=g)
    idx = torch.arange(k * batch_size, (k + 1) * batch_size) % num_blocks
    return perm[idx]
