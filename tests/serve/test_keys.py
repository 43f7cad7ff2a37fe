"""The keys file (hylorada_serve/keys.py): schema, scopes, and every hostile input refused with its file and line.

  * TOML and JSON describe the same tenants; digests in either case; several keys per tenant; lookup by digest;
  * scopes: exact names and PREFIX*; `all_adapters`; `*` alone, an empty pattern, `../`, regex, a path: refused;
  * every problem of a file in one error, each naming FILE:LINE; unknown fields, bad limits, a key written in
    plain text, a digest of the wrong length, one key for two tenants, duplicate JSON tenants: refused;
  * a 10,000-tenant file loads and looks up correctly;
  * `python -m hylorada_serve.keys digest | check`.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from hylorada_serve.keys import KeysFileError, Tenant, digest_hex, load, parse

A, B = digest_hex("key-a"), digest_hex("key-b")

TOML = f"""
# two teams and a shared adapter
[tenants.team-a]
keys = ["{A}", "{digest_hex('key-a2')}"]
adapters = ["team-a-*", "shared"]
requests_per_second = 2.5
tokens_per_minute = 1000
concurrent = 3

[tenants.team-b]
keys = ["{B.upper()}"]
adapters = ["team-b-x", "shared"]
base = false
admin = true
"""


def test_toml_and_json_give_the_same_tenants(tmp_path):
    t = parse(TOML, "k.toml")
    doc = {"tenants": {"team-a": {"keys": [A, digest_hex("key-a2")], "adapters": ["team-a-*", "shared"],
                                  "requests_per_second": 2.5, "tokens_per_minute": 1000, "concurrent": 3},
                       "team-b": {"keys": [B.upper()], "adapters": ["team-b-x", "shared"], "base": False,
                                  "admin": True}}}
    (tmp_path / "k.json").write_text(json.dumps(doc, indent=2))
    j = load(tmp_path / "k.json")
    assert t.tenants == j.tenants and t.by_digest == j.by_digest
    a = t.tenant_for(hashlib.sha256(b"key-a").digest())
    assert a == t.tenant_for(hashlib.sha256(b"key-a2").digest())          # two keys, one tenant
    assert a == Tenant("team-a", ("shared",), ("team-a-",), requests_per_second=2.5, tokens_per_minute=1000,
                       concurrent=3)
    b = t.tenant_for(hashlib.sha256(b"key-b").digest())                   # upper-case hex digits accepted
    assert b.name == "team-b" and b.base is False and b.admin is True and b.concurrent == 0
    assert t.tenant_for(hashlib.sha256(b"key-c").digest()) is None


def test_scopes():
    a = parse(TOML).tenants[0]
    assert a.allows("team-a-") and a.allows("team-a-summarize") and a.allows("shared")
    assert not a.allows("team-b-x") and not a.allows("team-a") and not a.allows("shared2") and not a.allows("Team-a-x")
    everyone = parse(f'[tenants.ops]\nkeys = ["{A}"]\nall_adapters = true\n').tenants[0]
    assert everyone.allows("anything") and everyone.base


@pytest.mark.parametrize("field, value, says", [
    ("adapters", '["*"]', "`*` alone would allow every adapter"),
    ("adapters", '[""]', "an empty pattern"),
    ("adapters", '["../team-b-x"]', "neither an adapter name"),
    ("adapters", '["team-a/*"]', "neither an adapter name"),
    ("adapters", '["team-*-x"]', "neither an adapter name"),
    ("adapters", '["^team-a.*$"]', "neither an adapter name"),
    ("adapters", '["**"]', "neither an adapter name"),
    ("adapters", '"team-a-*"', "a list of adapter names"),
    ("requests_per_second", "-1", "a number in 0.."),
    ("requests_per_second", "true", "a number in 0.."),
    ("requests_per_second", "nan", "a number in 0.."),
    ("tokens_per_minute", "10.5", "a whole number in 0.."),
    ("concurrent", '"4"', "a whole number in 0.."),
    ("base", '"yes"', "true or false"),
    ("request_per_second", "5", "unknown field"),
])
def test_bad_fields_are_refused_naming_the_line(field, value, says):
    text = f'[tenants.ok]\nkeys = ["{B}"]\n\n[tenants.team-a]\nkeys = ["{A}"]\n{field} = {value}\n'
    with pytest.raises(KeysFileError) as e:
        parse(text, "tenants.toml")
    (problem,) = e.value.problems
    assert problem.startswith("tenants.toml:6: tenant 'team-a': ") and says in problem, problem


@pytest.mark.parametrize("key, says", [
    ("key-a", "got 5 characters"),                    # a key in plain text, not its digest
    (A[:-1], "got 63 characters"),
    (A + "0", "got 65 characters"),
    ("g" * 64, "got 64 characters"),
    ("", "got 0 characters"),
])
def test_a_key_that_is_not_a_digest_is_refused(key, says):
    with pytest.raises(KeysFileError) as e:
        parse(f'[tenants.team-a]\nadapters = ["x"]\nkeys = ["{key}"]\n', "t.toml")
    (problem,) = e.value.problems
    assert problem.startswith("t.toml:3: tenant 'team-a': keys[0]: not a SHA-256 digest") and says in problem
    assert "write the digest, never the key" in problem


def test_every_problem_is_listed_once():
    text = (f'[tenants.a]\nkeys = ["{A}"]\nconcurrent = -2\n\n[tenants.b]\nkeys = ["{A}"]\n\n'
            f'[tenants."bad name"]\nkeys = ["{B}"]\n\n[tenants.c]\nkeys = []\n')
    with pytest.raises(KeysFileError) as e:
        parse(text, "t.toml")
    p = e.value.problems
    assert len(p) == 4, p
    assert p[0].startswith("t.toml:3: tenant 'a': concurrent")
    assert p[1].startswith("t.toml:6: tenant 'b': key ") and "already tenant 'a'" in p[1]
    assert "tenant name 'bad name'" in p[2] and p[2].startswith("t.toml:8:")
    assert p[3].startswith("t.toml:12: tenant 'c': keys: a non-empty list")


@pytest.mark.parametrize("text, json_format, says", [
    ("[tenants.a\nkeys = 1\n", False, "t:1: not valid TOML"),
    ('{"tenants": {"a": {"keys": []}, "a": {"keys": []}}}', True, "duplicate key 'a'"),
    ('{"tenants": [1, 2]}', True, "one table, `tenants`"),
    ('{"tenant": {}}', True, "unknown top-level key(s) ['tenant']"),
    ('[[1]]' * 1 + '[' * 100_000, True, "not valid JSON"),
    ("[tenants]\na = 3\n", False, "must be a table of fields"),
])
def test_malformed_files(text, json_format, says):
    with pytest.raises(KeysFileError) as e:
        parse(text, "t", json_format=json_format)
    assert says in str(e.value), e.value


def test_ten_thousand_tenants_load_and_look_up():
    text = "".join(f'[tenants.t{i}]\nkeys = ["{digest_hex(f"key-{i}")}"]\nadapters = ["t{i}-*"]\n'
                   for i in range(10_000))
    table = parse(text)
    assert len(table.tenants) == len(table.by_digest) == 10_000
    for i in (0, 4_321, 9_999):
        t = table.tenant_for(hashlib.sha256(f"key-{i}".encode()).digest())
        assert t.name == f"t{i}" and t.allows(f"t{i}-x") and not t.allows(f"t{i + 1}-x")


def test_cli_digest_and_check(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hylorada_serve.keys", "digest"], input="key-a\n",
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == A == hashlib.sha256(b"key-a").hexdigest()
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(TOML)
    bad.write_text(TOML.replace('concurrent = 3', 'concurrent = "3"'))
    ok = subprocess.run([sys.executable, "-m", "hylorada_serve.keys", "check", str(good)], capture_output=True,
                        text=True)
    assert ok.returncode == 0 and "2 tenants, 3 keys" in ok.stdout
    no = subprocess.run([sys.executable, "-m", "hylorada_serve.keys", "check", str(bad)], capture_output=True,
                        text=True)
    assert no.returncode == 1 and f"{bad}:8: tenant 'team-a': concurrent" in no.stderr, no.stderr


@pytest.mark.parametrize("value, says", [
    ("1" + "0" * 400, "a whole number in 0..1e+12"),        # an integer too large for a float (was OverflowError)
    ("1e-310", "(0, or at least 0.001)"),                    # Retry-After would be infinite (was a 500 per refusal)
    ("1e13", "in 0..1e+12"),
])
def test_absurd_limits_are_refused(value, says):
    field = "tokens_per_minute" if "." not in value and "e" not in value else "requests_per_second"
    with pytest.raises(KeysFileError) as e:
        parse(f'[tenants.a]\nkeys = ["{A}"]\n{field} = {value}\n', "t.toml")
    (problem,) = e.value.problems
    assert problem.startswith(f"t.toml:3: tenant 'a': {field}") and says in problem and len(problem) < 300, problem


def test_the_digest_of_the_empty_key_is_refused():
    empty = hashlib.sha256(b"").hexdigest()                  # `printf %s "$KEY" | sha256sum` with KEY unset
    with pytest.raises(KeysFileError) as e:
        parse(f'[tenants.a]\nkeys = ["{empty.upper()}"]\n', "t.toml")
    assert "the digest of the empty key" in e.value.problems[0]


def test_a_file_full_of_mistakes_is_reported_quickly_and_briefly():
    import time
    text = "".join(f'[tenants.t{i}]\nkeys = ["nope"]\n' for i in range(20_000))
    t0 = time.perf_counter()
    with pytest.raises(KeysFileError) as e:
        parse(text, "t.toml")
    assert len(e.value.problems) == 101 and "and more problems" in e.value.problems[-1]
    assert time.perf_counter() - t0 < 30                     # bounded work (was ~quadratic: minutes)
