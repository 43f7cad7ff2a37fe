"""Adds one worker method, `hylorada_lora_path(path=None) -> str`, to vLLM's `WorkerBase`
(vllm/v1/worker/worker_base.py), so `LLM.collective_rpc("hylorada_lora_path", args=("vllm",))` switches
a running engine between the grouped CPU LoRA path, vLLM's own and the static one (lora_path.py: the engine's
state re-picks its implementation) and reports it — the benchmark compares both on one engine, same model,
same adapters. A string method name needs no insecure (pickled-callable) RPC.
"""
from __future__ import annotations

from .wrap import add


def hylorada_lora_path(self, path: str | None = None) -> str:
    """Set (when given) and return this worker's LoRA path: 'grouped' | 'vllm' | 'static'."""
    from .engine import use_path
    manager = self.model_runner.lora_manager._adapter_manager
    if path is not None:
        use_path(manager, path)             # ValueError naming the paths for an unknown one
    return manager.hylorada.lora.path.name


def install() -> None:
    from vllm.v1.worker.worker_base import WorkerBase
    add(WorkerBase, "hylorada_lora_path", hylorada_lora_path)
