"""Every change to vLLM's own behaviour lives in this package (import name `hylorada_patches`).

`register()` is the `vllm.general_plugins` entry point; it runs in every engine process.
"""


def register() -> None:
    """vLLM plugin entry point. The serving patches hook in here (see docs/structure.md)."""
    return None
