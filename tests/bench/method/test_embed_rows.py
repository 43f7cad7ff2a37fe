"""bench.method.embed_rows on the tiny base: training changes only the rows of ids it trained on when the table is
the input side alone (the count the bench reports is what export stores), and every row when the base ties it to the
output projection; untied_copy keeps the model's logits."""
import torch

from bench.method.embed_rows import DOCS, run_one, untied_copy
from tests.commands.test_export import tied_copy


def test_rows_changed_tied_and_untied(tiny_base, tmp_path):
    data = tmp_path / "docs.txt"
    data.write_text("\n\n".join(f.read_text() for f in sorted(DOCS.glob("*.md"))))
    tied = tied_copy(tiny_base, tmp_path / "tied")
    untied = untied_copy(tied, tmp_path / "untied")
    from transformers import AutoModelForCausalLM
    ids = torch.randint(3, 500, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(untied)(ids).logits,
                                   AutoModelForCausalLM.from_pretrained(tied)(ids).logits)
    u = run_one(untied, data, tmp_path / "run-u", seq=32, batch=2, steps=2)
    assert 0 < u["rows_changed"] <= u["distinct_ids_trained_on"] < 512 and u["exported"]
    assert u["changed_rows_bytes"] == u["rows_changed"] * (8 + 128 * 4) and u["full_table_bytes"] == 512 * 128 * 4
    t = run_one(tied, data, tmp_path / "run-t", seq=32, batch=2, steps=2)
    assert t["rows_changed"] > u["distinct_ids_trained_on"] and not t["exported"] and t["export_note"] == "export refused"
