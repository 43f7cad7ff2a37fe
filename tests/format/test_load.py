"""format.load's finiteness check: `all_finite` (small tensors checked together BATCH elements at a time, large ones
where they are) says what the per-tensor loop says, and read_tensors / first_nonfinite still name the tensor that
holds the NaN or Inf."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from hylorada.format.layout import AdapterError
from hylorada.format.load import BATCH, SMALL, all_finite, first_nonfinite, read_tensors


def loop_finite(tensors) -> bool:                    # the slow twin: one isfinite per tensor
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def cases():
    g = torch.Generator().manual_seed(0)
    small = [torch.randn(7, generator=g), torch.randn((), generator=g), torch.randn(3, 5, generator=g).bfloat16()]
    big = torch.randn(SMALL + 1, generator=g)
    ints = torch.tensor([1, 2, 3])
    yield "finite", [*small, big, ints]
    yield "empty", []
    yield "ints only", [ints]
    for where, bad in (("nan in a scalar", 1), ("inf in a bf16 one", 2), ("nan in the big one", 3)):
        ts = [t.clone() for t in [*small, big]]
        ts[bad].view(-1)[0] = float("nan") if "nan" in where else float("inf")
        yield where, [*ts, ints]
    # many small ones: more than BATCH elements per dtype, so several batches (the bad one first, middle, last)
    many = [torch.randn(SMALL, generator=g) for _ in range(3 * BATCH // SMALL + 1)]
    yield "finite", many
    for where, bad in (("nan in the first batch", 0), ("inf in a middle batch", len(many) // 2),
                       ("nan in the last, partial batch", len(many) - 1)):
        ts = [t.clone() for t in many]
        ts[bad][-1] = float("nan") if "nan" in where else float("-inf")
        yield where, ts


@pytest.mark.parametrize("name,tensors", list(cases()), ids=[f"{i}-{c[0]}" for i, c in enumerate(cases())])
def test_all_finite_equals_the_per_tensor_loop(name, tensors):
    assert all_finite(tensors) == loop_finite(tensors)
    assert all_finite(tensors) == (name in ("finite", "empty", "ints only"))


def test_read_tensors_names_the_bad_tensor(tmp_path):
    f = tmp_path / "t.safetensors"
    bad = torch.ones(4)
    bad[2] = float("-inf")
    save_file({"a.c": torch.ones(3), "b.c": bad, "z.big": torch.zeros(SMALL * 2)}, str(f))
    with pytest.raises(AdapterError, match="NaN or Inf") as e:
        read_tensors(f)
    assert "b.c" in str(e.value)


def test_first_nonfinite_names_the_first_bad_tensor_in_order():
    ok = {f"t{i}": torch.ones(SMALL) for i in range(2 * BATCH // SMALL)}
    assert first_nonfinite(ok | {"ids": torch.tensor([1, 2])}) is None
    bad = dict(ok)
    for k in ("t3", "t1"):
        bad[k] = torch.ones(SMALL)
        bad[k][5] = float("nan")
    assert first_nonfinite(bad) == "t1"
