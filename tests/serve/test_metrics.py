"""Per-adapter Prometheus series: recorded per request and per lifecycle event, and dropped entirely when the
store forgets a name (bounded series over weeks of adapters coming and going). No vLLM."""
from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest

from hylorada_serve import metrics


def series_of(name: str) -> list[str]:
    text = generate_latest(REGISTRY).decode()
    return [ln for ln in text.splitlines() if ln.startswith("hylorada_") and f'adapter="{name}"' in ln]


def test_forget_drops_every_series_of_a_name_and_only_that_name():
    for name in ("gone-1", "kept-1"):
        metrics.on_event(name, "loaded", 1, 2)
        metrics.request_done(name, 200, 0.3, 7)
        metrics.request_done(name, 404, 0.01, None)
    metrics.on_event("gone-1", "removed", None, 1)
    before = series_of("gone-1")
    assert any("hylorada_adapter_requests_total" in ln and 'code="404"' in ln for ln in before)
    assert any("hylorada_adapter_generated_tokens_total" in ln and ln.endswith(" 7.0") for ln in before)
    assert any("hylorada_adapter_load_events_total" in ln and 'event="removed"' in ln for ln in before)
    kept = series_of("kept-1")
    metrics.forget("gone-1")
    assert series_of("gone-1") == []
    assert series_of("kept-1") == kept
    metrics.forget("gone-1")                              # twice, or a name never seen: nothing happens
    metrics.forget("never-seen")
    metrics.request_done("gone-1", 200, 0.1, 3)           # a name that comes back starts from zero
    assert any("generated_tokens_total" in ln and ln.endswith(" 3.0") for ln in series_of("gone-1"))


def test_token_counter_reads_usage_past_the_buffer_and_every_kind_of_delta():
    import json

    from hylorada_serve.metrics import TokenCounter

    big = TokenCounter(stream=False)                       # 20 top logprobs per token: a body over 1 MiB
    body = json.dumps({"choices": [{"text": "x", "logprobs": {"top": ["y" * 100] * 30_000}}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 917}}).encode()
    for i in range(0, len(body), 65_536):
        big.feed(body[i:i + 65_536])
    assert len(body) > TokenCounter.BUFFER and big.total() == 917
    small = TokenCounter(stream=False)
    small.feed(json.dumps({"usage": {"output_tokens": 5}}).encode())   # Anthropic's name
    assert small.total() == 5
    s = TokenCounter(stream=True)
    for delta in ({"content": "a"}, {"reasoning_content": "b"}, {"tool_calls": [{"id": "t"}]}, {"role": "assistant"}):
        s.feed(b"data: " + json.dumps({"choices": [{"delta": delta}]}).encode() + b"\n\n")
    assert s.so_far() == 3                                 # a role-only chunk carries no token
    s.feed(b"event: x\ndata: " + json.dumps({"type": "content_block_delta", "delta": {"text": "c"}}).encode() + b"\n\n")
    s.feed(b"data: " + json.dumps({"choices": [], "usage": {"completion_tokens": 9}}).encode() + b"\n\n")
    assert s.tokens == 4 and s.so_far() == 9 and s.total() == 9
