"""patches.embeddings without an engine: trained input-embedding rows per adapter on vLLM's own VocabParallelEmbedding.

A token of a slot whose adapter trained its row takes that row (the reference's token-by-token rule); tokens of the
base, of adapters without rows, and ids an adapter did not train are vLLM's embedding bit for bit."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hylorada.format.adapter import ServedAdapter
from hylorada.format.layout import EMBED_IDS, EMBED_ROWS, AdapterError
from hylorada.format.meta import ServedMeta
from hylorada_patches import embeddings as E

V, D, S = 100, 32, 3


def ad(name, ids=None):
    if ids is None:
        return ServedAdapter(path=Path(f"/x/{name}"), meta=ServedMeta(kind="lora"), peft_config={}, lora={})
    rows = torch.randn(len(ids), D, generator=torch.Generator().manual_seed(len(name)))
    return ServedAdapter(path=Path(f"/x/{name}"), meta=ServedMeta(kind="hylorada", embeddings=True), peft_config={},
                         lora={}, dynamic={EMBED_IDS: torch.tensor(ids), EMBED_ROWS: rows})


class Model(torch.nn.Module):
    def __init__(self, embedding):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.embed_tokens = embedding


@pytest.fixture(scope="module")
def embedding():
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import parallel_state as ps
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
    from vllm.utils.network_utils import get_open_port
    with set_current_vllm_config(VllmConfig()):          # a one-process "parallel" world, as a TP=1 worker has
        ps.init_distributed_environment(1, 0, f"tcp://127.0.0.1:{get_open_port()}", 0, backend="gloo")
        ps.ensure_model_parallel_initialized(1, 1)
        try:
            m = VocabParallelEmbedding(V, D)
            with torch.no_grad():
                m.weight.normal_(generator=torch.Generator().manual_seed(0))
            yield m
        finally:
            ps.destroy_model_parallel()
            ps.destroy_distributed_environment()


def test_only_the_trained_rows_of_each_slot_change(embedding):
    slots = {"t": torch.full((10,), -1)}
    tables = E.EmbedTables.attach(Model(embedding), S, lambda: slots["t"])
    a, b = ad("a", [1, 5, 99]), ad("bb", [5, 7])
    tables.set_slot(0, a)
    tables.set_slot(1, ad("plain"))
    tables.set_slot(2, b)
    assert tables.bytes == (3 + 2) * 8 + (3 + 2) * D * 4
    tokens = torch.tensor([5, 5, 1, 7, 99, 5, 7, 2, 1, 5])
    slots["t"] = torch.tensor([-1, 0, 0, 0, 0, 1, 2, 2, 2, 2, 0, 0])       # longer than the step (vLLM pads it)
    base = embedding.weight[tokens]
    got = embedding(tokens)
    want = base.clone()
    table = {0: dict(zip(a.embedding_rows[0].tolist(), a.embedding_rows[1])),
             2: dict(zip(b.embedding_rows[0].tolist(), b.embedding_rows[1]))}
    for t, (tok, s) in enumerate(zip(tokens.tolist(), slots["t"].tolist())):
        if s in table and tok in table[s]:
            want[t] = table[s][tok]
    assert torch.equal(got, want)
    assert torch.equal(got[[0, 3, 5, 8]], base[[0, 3, 5, 8]])      # base, an untrained id, a plain slot, id 1 in b
    tables.set_slot(0, None)
    tables.set_slot(2, None)
    assert tables.bytes == 0 and torch.equal(embedding(tokens), base)   # rows gone with the adapters
    slots["t"] = None
    tables.set_slot(0, a)
    assert torch.equal(embedding(tokens), base)                    # no LoRA mapping (a profile run): vLLM's own


def test_an_engine_without_an_input_embedding_refuses_embedding_rows():
    tables = E.EmbedTables.attach(torch.nn.Linear(2, 2), S, lambda: None)
    tables.check(ad("plain"))
    with pytest.raises(AdapterError, match="no 'embed_tokens' module"):
        tables.check(ad("a", [1]))
