"""lora_info: vLLM's vllm:lora_requests_info keeps only its newest label set, and names adapters as clients do
(`name`, never hylorada-serve's per-version `name@vN`). No engine (the real server's
/metrics is checked in tests/serve/test_server.py::test_lora_requests_info_keeps_one_series)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from hylorada_patches.lora_info import LatestOnlyGauge, install, public_names

NAMES = ["max_lora", "waiting_lora_adapters", "running_lora_adapters"]


def series(registry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines()
            if line.startswith("vllm:lora_requests_info{")]


def test_only_the_newest_label_set_is_kept():
    reg = CollectorRegistry()
    g = LatestOnlyGauge(Gauge("vllm:lora_requests_info", "d", labelnames=NAMES, registry=reg))
    for running in ("a@v1", "a@v1,b@v1", "", "b@v2", "b@v2"):         # as vLLM calls it: keywords, an int
        g.labels(max_lora=8, waiting_lora_adapters="", running_lora_adapters=running).set_to_current_time()
        assert len(series(reg)) == 1, series(reg)
    assert 'running_lora_adapters="b"' in series(reg)[0] and 'max_lora="8"' in series(reg)[0]
    g.labels("8", "", "c@v1").set(1.0)                                   # positional values too
    assert series(reg) == ['vllm:lora_requests_info{max_lora="8",running_lora_adapters="c",'
                           'waiting_lora_adapters=""} 1.0']


def test_labels_carry_the_names_clients_send():
    assert public_names("a@v1,b@v3,a@v2") == "a,b" and public_names("") == ""
    assert public_names("x@v1.2,y@vz,z@v10") == "x@v1.2,y@vz,z"          # only a final @v<digits> is a version
    reg = CollectorRegistry()
    g = LatestOnlyGauge(Gauge("vllm:lora_requests_info", "d", labelnames=NAMES, registry=reg))
    g.labels(max_lora=4, waiting_lora_adapters="demo-lora@v2", running_lora_adapters="demo-lora@v1,b@v7").set(5)
    assert series(reg) == ['vllm:lora_requests_info{max_lora="4",running_lora_adapters="demo-lora,b",'
                           'waiting_lora_adapters="demo-lora"} 5.0']
    g.labels(max_lora=4, waiting_lora_adapters="", running_lora_adapters="b@v8").set(6)   # the same set by name
    assert len(series(reg)) == 1 and 'running_lora_adapters="b"' in series(reg)[0]


def test_unwrapped_gauge_grows_which_is_what_the_patch_is_for():
    reg = CollectorRegistry()
    g = Gauge("vllm:lora_requests_info", "d", labelnames=NAMES, registry=reg)
    for i in range(5):
        g.labels(max_lora=8, waiting_lora_adapters="", running_lora_adapters=f"a@v{i}").set_to_current_time()
    assert len(series(reg)) == 5


def test_a_label_set_removed_elsewhere_does_not_raise():
    reg = CollectorRegistry()
    inner = Gauge("vllm:lora_requests_info", "d", labelnames=NAMES, registry=reg)
    g = LatestOnlyGauge(inner)
    g.labels(max_lora=8, waiting_lora_adapters="", running_lora_adapters="a").set(1)
    inner.clear()
    g.labels(max_lora=8, waiting_lora_adapters="", running_lora_adapters="b").set(2)
    assert len(series(reg)) == 1


def test_install_wraps_the_stat_logger_once():
    from vllm.v1.metrics.loggers import PrometheusStatLogger
    install()
    wrapped = PrometheusStatLogger.__init__
    install()
    assert PrometheusStatLogger.__init__ is wrapped and wrapped._hylorada
