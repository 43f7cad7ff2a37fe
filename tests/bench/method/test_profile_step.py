"""bench.method.profile_step's labels (no engine): a wrapped function returns what it returned, and the profiler
sees its time under the label."""
from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from bench.method.profile_step import label


def test_label_keeps_the_result_and_names_the_time():
    f = label(lambda a, b: a @ b, "hy.lora")
    a, b = torch.randn(8, 4), torch.randn(4, 3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = f(a, b)
    assert torch.equal(out, a @ b)
    ev = {e.key: e for e in prof.key_averages()}
    assert "hy.lora" in ev and ev["hy.lora"].count == 1
