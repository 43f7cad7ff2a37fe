"""The one way a patch module changes a vLLM attribute: `wrap` a method around its original, or `patch` any
attribute (a class tuple, a new worker method) — each installed once per process.

vLLM loads general plugins in every engine process, sometimes twice in one, so every install is called
more than once; and a vLLM method wrapped by two patch modules would run their effects in an order set by
import order. So here:

  - `patch(owner, name, key, make)` sets `owner.name = make(original)` the first time `key` asks, and after
    that returns what it installed (remembered per (owner, name) in this module, which exists once per
    process: the package has one import name, hylorada_patches);
  - a second, different key for the same attribute raises: each vLLM attribute has one wrapper (engine.py
    holds the LoRA manager's and the runner's, feeding the LoRA and the attention halves of the state);
  - `wrap(owner, name)(fn)` is `patch` for methods: `fn(orig, self, *args, **kwargs)` replaces the method,
    keeps its name and docstring, and carries `_hylorada = key` (who wrapped it, for readers and tests).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

MARK = "_hylorada"
_INSTALLED: dict[tuple[Any, str], tuple[str, Any]] = {}      # (owner, name) -> (key, value installed)


def patch(owner, name: str, key: str, make: Callable[[Any], Any]) -> Any:
    """owner.name = make(current value or None), once per (owner, name); returns the installed value."""
    done = _INSTALLED.get((owner, name))
    if done is not None:
        if done[0] != key:
            raise RuntimeError(f"hylorada_patches: {getattr(owner, '__qualname__', owner)}.{name} is already "
                               f"patched by {done[0]}; {key} must go through that one wrapper")
        return done[1]
    value = make(getattr(owner, name, None))
    setattr(owner, name, value)
    _INSTALLED[(owner, name)] = (key, value)
    return value


def wrap(owner, name: str) -> Callable[[Callable], Callable]:
    """Decorator installing `fn(orig, *args, **kwargs)` in place of the method `owner.name`, once."""
    def install(fn: Callable) -> Callable:
        key = f"{fn.__module__}.{fn.__qualname__}"

        def make(orig):
            if orig is None:
                raise AttributeError(f"hylorada_patches: {owner.__qualname__} has no {name!r} to wrap "
                                     "(this vLLM moved it; see apply.py's version gate)")

            @functools.wraps(orig)
            def wrapper(*args, **kwargs):
                return fn(orig, *args, **kwargs)
            setattr(wrapper, MARK, key)
            return wrapper
        return patch(owner, name, key, make)
    return install


def add(owner, name: str, value: Callable) -> Callable:
    """A new attribute (vLLM has none by that name), installed once; e.g. a worker RPC method."""
    key = f"{value.__module__}.{value.__qualname__}"

    def make(orig):
        if orig is not None:
            raise AttributeError(f"hylorada_patches: {owner.__qualname__}.{name} exists in this vLLM; not replacing it")
        setattr(value, MARK, key)
        return value
    return patch(owner, name, key, make)
