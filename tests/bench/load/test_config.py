"""BenchConfig validation and the loopback-only rule (nothing is sent anywhere else)."""
import json
import math

import pytest

from bench.load import serve
from bench.load.config import BenchConfig, BenchConfigError, check_loopback_url, is_loopback_host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "LOCALHOST", "::1", "[::1]"])
def test_loopback_hosts_accepted(host):
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["10.0.0.1", "0.0.0.0", "192.168.1.5", "example.com", "localhost.evil.com",
                                  "128.0.0.1", "::", "", None, "::ffff:8.8.8.8"])
def test_other_hosts_refused(host):
    assert not is_loopback_host(host)


@pytest.mark.parametrize("url", ["http://10.1.2.3:8000", "http://example.com", "ftp://127.0.0.1", "127.0.0.1:8000",
                                 "http://[::2]:80"])
def test_urls_refused(url):
    with pytest.raises(BenchConfigError):
        check_loopback_url(url)
    with pytest.raises(BenchConfigError, match="loopback"):
        BenchConfig(url=url, adapters=("a",))


def test_every_problem_listed():
    with pytest.raises(BenchConfigError) as e:
        BenchConfig(url="http://8.8.8.8", adapters=(), alpha=-1, rate=0, prompt_len=(5, 2), num_requests=0,
                    max_concurrency=0, label="a b")
    msg = str(e.value)
    for word in ("url", "adapters", "alpha", "rate", "prompt_len", "num_requests", "max_concurrency", "label"):
        assert word in msg


def test_defaults_valid_and_json():
    cfg = BenchConfig(adapters=("x",))
    assert math.isinf(cfg.rate) and cfg.to_json()["rate"] == "inf"
    json.dumps(cfg.to_json())


def test_cli_refuses_remote_without_sending(capsys):
    rc = serve.main(["--url", "http://203.0.113.7:8000", "--adapters", "a", "--no-progress"])
    assert rc == 2
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "loopback" in json.loads(last)["error"]
