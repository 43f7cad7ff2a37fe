"""Every change to vLLM's own behaviour lives in this package (import name `hylorada_patches`).

`register()` is the `vllm.general_plugins` entry point; it runs in every engine process and
calls `apply()` (version check + install). One module per vLLM touch point:

    apply.py        version gate, idempotent install
    layers.py       HyLoRADA-aware subclasses of vLLM's linear LoRA layers (c, p(pos), base-token mask)
    grouped_cpu.py  grouped multi-adapter LoRA kernel for the CPU (vs vLLM's per-token weight gather)
    state.py        per-engine slot tables + the current step's per-token data (no globals)
    positions.py    LoRAModelManager.__init__: state on the punica wrapper, per-step hooks on the model
    slots.py        LoRAModelManager.activate_adapter: write c / w_pos / position bias / landmarks to slots
    loading.py      WorkerLoRAManager._load_adapter: validate the served form, attach the side file
    landmarks.py    per-token landmark read-outs on the MLP blocks
    rope.py         the engine's RoPE override from a set of adapters
    control.py      worker RPC `hylorada_lora_path` (switch grouped / vLLM path at run time)
    tp.py           tensor-parallel sharding of c (pure functions, mirrored by the layers)
    lora_info.py    vLLM's vllm:lora_requests_info gauge keeps only its newest label set (was unbounded)
    shm_notify.py   busy shm-ring readers let libzmq free the notify socket's queued commands (was unbounded)
    attention.py    per-adapter DAA / sink / s2 attention (CPU platform): attn_state, attn_hooks,
                    attn_backend (CPU attention forward), attn_compute (paged-KV reference), attn_kv (sink KV freeing)
"""


def register() -> None:
    """vLLM plugin entry point: install the HyLoRADA patches in this process."""
    from .apply import apply
    apply()
