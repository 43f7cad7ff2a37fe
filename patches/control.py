"""Adds one worker method, `hylorada_lora_path(path=None) -> str`, to vLLM's `WorkerBase`
(vllm/v1/worker/worker_base.py), so `LLM.collective_rpc("hylorada_lora_path", args=("vllm",))` switches
a running engine between the grouped CPU LoRA path and vLLM's own (grouped_cpu.py) and reports it —
the benchmark compares both on one engine, same model, same adapters. A string method name needs no
insecure (pickled-callable) RPC.
"""
from __future__ import annotations


def hylorada_lora_path(self, path: str | None = None) -> str:
    """Set (when given) and return this worker's LoRA path: 'grouped' | 'vllm'."""
    from .grouped_cpu import PATHS
    state = self.model_runner.lora_manager._adapter_manager.hylorada
    if path is not None:
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS} (got {path!r})")
        state.grouped = path == "grouped"
    return "grouped" if state.grouped else "vllm"


def install() -> None:
    from vllm.v1.worker.worker_base import WorkerBase
    WorkerBase.hylorada_lora_path = hylorada_lora_path
