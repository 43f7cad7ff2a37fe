"""wrap.py: every patch installs once per process, and each vLLM attribute has one wrapper. No engine."""
from __future__ import annotations

import pytest

from hylorada_patches.wrap import MARK, add, patch, wrap


def make_owner():
    class Owner:
        items = (1, 2)

        def greet(self, name):
            """Say hello."""
            return f"hello {name}"
    return Owner


def loud(orig, self, name):
    return orig(self, name).upper()


def quiet(orig, self, name):
    return orig(self, name).lower()


def test_wrap_once_keeps_name_and_doc():
    Owner = make_owner()
    first = wrap(Owner, "greet")(loud)
    assert wrap(Owner, "greet")(loud) is first and Owner.greet is first     # a second install does nothing
    assert Owner().greet("vllm") == "HELLO VLLM"                            # wrapped once, not twice
    assert Owner.greet.__name__ == "greet" and Owner.greet.__doc__ == "Say hello."
    assert getattr(Owner.greet, MARK) == f"{__name__}.loud"


def test_a_second_wrapper_of_the_same_method_is_refused():
    Owner = make_owner()
    wrap(Owner, "greet")(loud)
    with pytest.raises(RuntimeError, match="already patched by .*loud"):
        wrap(Owner, "greet")(quiet)


def test_patch_any_attribute_once_and_add_a_new_one():
    Owner = make_owner()
    calls = []

    def make(items):
        calls.append(items)
        return items + (3,)
    assert patch(Owner, "items", "k", make) == (1, 2, 3)
    assert patch(Owner, "items", "k", make) == (1, 2, 3) and len(calls) == 1

    def rpc(self):
        return "ok"
    add(Owner, "rpc", rpc)
    add(Owner, "rpc", rpc)
    assert Owner().rpc() == "ok"
    with pytest.raises(AttributeError, match="exists"):
        add(Owner, "greet", rpc)
    with pytest.raises(AttributeError, match="no 'missing'"):
        wrap(Owner, "missing")(loud)
