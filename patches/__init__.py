"""Every change to vLLM's own behaviour lives in this package, imported as `hylorada_patches` only.

pyproject maps the import name `hylorada_patches` to this folder (patches/); importing the folder as
`patches` would load a second copy with its own module state (what wrap.py installed, the attention
flag), so that name is refused below.

`register()` is the `vllm.general_plugins` entry point; it runs in every engine process and
calls `apply()` (version check + install). One module per vLLM touch point:

    apply.py        version gate; installs every patch
    wrap.py         the one idempotent install helper every patch module uses (each vLLM attribute once)
    env.py          the environment variables the patches read (HYLORADA_ATTENTION, _LORA_PATH, ...)
    engine.py       LoRAModelManager.__init__ / activate_adapter, the runner's set_active_loras: one per-engine
                    state (slot tables, step plan; LoRA and attention halves), one begin/end per step
    state.py        that state, no vLLM: HyState (LoRA half), EngineState (both halves), SmallPlan
    layers.py       HyLoRADA-aware subclasses of vLLM's linear LoRA layers (c, p(pos), base-token mask)
    lora_path.py    the LoRA path (grouped / vLLM's punica ops): one implementation per path, picked per engine
    grouped_cpu.py  the kernels of both paths: grouped multi-adapter LoRA for the CPU, vLLM's ops masked
    loading.py      WorkerLoRAManager._load_adapter: validate the served form, attach the side file
    landmarks.py    per-token landmark read-outs on the MLP blocks
    rope.py         the engine's RoPE override from a set of adapters
    control.py      worker RPC `hylorada_lora_path` (switch grouped / vLLM path at run time)
    residency.py    worker RPC `hylorada_lora_residency` (adapters in slots, in the CPU cache, load counts)
    lora_info.py    vLLM's vllm:lora_requests_info gauge keeps only its newest label set (was unbounded)
    shm_notify.py   busy shm-ring readers let libzmq free the notify socket's queued commands (was unbounded)
    spin_nap.py     the shm-ring busy wait sleeps 50 us per check instead of sched_yield (it starved other processes)
    orphans.py      a model worker is SIGKILLed by the kernel when its engine core exits (it outlived a killed one)
    attention.py    per-adapter DAA / sink / s2 attention (CPU platform): attn_state (the attention half of
                    the state), attn_backend (CPU attention forward), attn_compute (paged-KV reference),
                    attn_kv (sink KV freeing)
"""
if __name__ != "hylorada_patches":
    raise ImportError(f"the patches/ folder is the package `hylorada_patches`: import hylorada_patches (e.g. "
                      f"`from hylorada_patches import apply`), not {__name__!r} — a second import name would "
                      "load a second copy of every module and its state")


def register() -> None:
    """vLLM plugin entry point: install the HyLoRADA patches in this process."""
    from .apply import apply
    apply()
