"""hylorada_serve/replicas/ingress.py's routing decisions (pure; the cluster test drives the whole path)."""
from __future__ import annotations

import json

from hylorada_serve.replicas.ingress import adapter_of, broadcast_kind

H = {"content-type": "application/json"}


def test_what_goes_to_every_replica():
    assert broadcast_kind("GET", "/metrics") == "metrics"
    assert broadcast_kind("GET", "/v1/replicas") == "replicas"
    for path in ("/v1/adapters/a/load", "/v1/adapters/a/reload", "/v1/adapters/a/unload", "/v1/load_lora_adapter",
                 "/v1/unload_lora_adapter"):
        assert broadcast_kind("POST", path) == "admin", path
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("GET", "/v1/adapters"),
                         ("GET", "/health"), ("POST", "/metrics")):
        assert broadcast_kind(method, path) is None, (method, path)


def test_the_adapter_is_the_bodys_model_unless_it_is_the_base():
    body = json.dumps({"model": "caps", "prompt": "x"}).encode()
    assert adapter_of("POST", H, body, "base") == "caps"
    assert adapter_of("POST", H, json.dumps({"model": "base"}).encode(), "base") == ""
    assert adapter_of("GET", H, body, "base") == ""
    for bad in (b"not json", b"[1, 2]", json.dumps({"model": 3}).encode(), b""):
        assert adapter_of("POST", H, bad, "base") == "", bad
    assert adapter_of("POST", {"content-type": "multipart/form-data"}, body, "base") == ""
