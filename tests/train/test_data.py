"""Training data: .txt/.jsonl into fixed blocks, clear errors, batches as a pure function of the step."""
from __future__ import annotations

import pytest
import torch

from hylorada.train.data import DataError, batch_indices, load_blocks, read_texts


def test_jsonl_and_txt_to_blocks(tiny_base, tmp_path):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_base)
    j = tmp_path / "d.jsonl"
    j.write_text('{"text": "the cat sits on the hill."}\n\n{"text": "a red bird sees the moon.", "id": 2}\n')
    t = tmp_path / "d.txt"
    t.write_text("the cat sits on the hill. a red bird sees the moon.")
    assert read_texts(j) == ["the cat sits on the hill.", "a red bird sees the moon."]
    blocks = load_blocks(j, tok, 4)
    ids = tok("the cat sits on the hill.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert blocks.shape[1] == 4 and blocks.flatten()[: len(ids)].tolist() == ids[: blocks.numel()][: len(ids)]
    assert load_blocks(t, tok, 4).shape[1] == 4
    with pytest.raises(DataError, match="not one block"):
        load_blocks(t, tok, 10_000)


@pytest.mark.parametrize("text,msg", [('{"text": 1}\n', 'd.jsonl:1: expected an object'), ("oops\n", "d.jsonl:1: not JSON")])
def test_bad_jsonl_names_file_and_line(tmp_path, text, msg):
    p = tmp_path / "d.jsonl"
    p.write_text(text)
    with pytest.raises(DataError, match=msg):
        read_texts(p)


def test_batches_depend_only_on_step():
    a = [batch_indices(s, 10, 3, seed=1).tolist() for s in range(7)]
    assert a == [batch_indices(s, 10, 3, seed=1).tolist() for s in range(7)]
    epoch0 = sum(a[:3], [])
    assert len(set(epoch0)) == 9                                   # no repeats within an epoch
    assert all(0 <= i < 10 for row in a for i in row)
    assert batch_indices(0, 10, 3, seed=2).tolist() != a[0] or batch_indices(1, 10, 3, seed=2).tolist() != a[1]
    assert torch.equal(batch_indices(0, 2, 3), batch_indices(0, 2, 3))  # batch larger than the data wraps
