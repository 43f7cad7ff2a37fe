"""hylorada_serve/replicas/merge.py: the replicas' /metrics as one text, broadcast answers combined."""
from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from hylorada_serve.replicas.merge import combine, merge_metrics

A = """# HELP vllm:num_requests_running Running requests.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="base"} 2.0
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="4",running_lora_adapters="a,b",waiting_lora_adapters=""} 1.7e9
# HELP ttft Time to first token.
# TYPE ttft histogram
ttft_bucket{le="0.1"} 3.0
ttft_bucket{le="+Inf"} 4.0
ttft_count 4.0
ttft_sum 0.5
"""
B = A.replace("} 2.0", "} 5.0").replace('"a,b"', '"c"')


def test_every_sample_gets_its_replica_and_each_family_one_block():
    text = merge_metrics({"r2": B, "r1": A})
    fams = {f.name: f for f in text_string_to_metric_families(text)}      # parses: one block per family
    running = {s.labels["replica"]: s.value for s in fams["vllm:num_requests_running"].samples}
    assert running == {"r1": 2.0, "r2": 5.0}
    lora = {s.labels["replica"]: s.labels["running_lora_adapters"] for s in fams["vllm:lora_requests_info"].samples}
    assert lora == {"r1": "a,b", "r2": "c"}
    buckets = [s for s in fams["ttft"].samples if s.name == "ttft_bucket"]
    assert len(buckets) == 4 and {s.labels["replica"] for s in buckets} == {"r1", "r2"}
    assert text.count("# TYPE ttft histogram") == 1


def test_an_unlabelled_sample_gets_a_label_set():
    text = merge_metrics({"r1": "# TYPE up gauge\nup 1\n"})
    assert 'up{replica="r1"} 1' in text


def test_combine_takes_the_worst_status_and_keeps_every_answer():
    assert combine({"r1": (200, b'{"ok": 1}'), "r2": (201, b"")}) == (
        200, {"replicas": {"r1": {"status": 200, "body": {"ok": 1}}, "r2": {"status": 201, "body": None}}})
    status, body = combine({"r1": (200, b"{}"), "r2": (504, b'"did not answer"')})
    assert status == 504 and body["replicas"]["r2"]["body"] == "did not answer"
    status, body = combine({"r1": (400, b"not json")})
    assert status == 400 and body["replicas"]["r1"]["body"] == "not json"
    assert json.dumps(combine({})[1]) == '{"replicas": {}}' and combine({})[0] == 503


def test_a_replica_label_of_its_own_is_kept_as_exported_replica():
    text = merge_metrics({"r1": '# TYPE g gauge\ng{replica="x",a="1"} 2\n'})
    (s,) = next(iter(text_string_to_metric_families(text))).samples
    assert s.labels == {"replica": "r1", "exported_replica": "x", "a": "1"}
