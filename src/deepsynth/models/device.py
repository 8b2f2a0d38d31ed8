"""Where and how a model computes: the device, the dtype, and the MoE experts implementation chosen for the device."""

from __future__ import annotations

import logging

import torch
from transformers import PreTrainedModel

__all__ = [
    "CPU_EXPERTS_IMPLEMENTATION",
    "GPU_EXPERTS_IMPLEMENTATION",
    "GPU_FALLBACK_EXPERTS_IMPLEMENTATION",
    "choose_experts_implementation",
    "resolve_device",
    "resolve_dtype",
    "set_experts_implementation",
]

logger = logging.getLogger(__name__)

_DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


# transformers' MoE experts implementations ("eager" per-expert loop, "batched_mm", "grouped_mm"),
# chosen per device by benchmarks/moe_experts.py (docs/performance.md, "MoE execution"): the fastest
# one whose logits and gradients match "eager" with LoRA on attention, shared experts, router and
# routed experts (PEFT ParamWrapper). CPU: measured here. CUDA: not measured here; the same rule
# picks grouped_mm where torch has the fused grouped-GEMM kernel (compute capability >= 8.0;
# elsewhere transformers would run a Python loop of mm), else eager. batched_mm is never chosen for
# training: it gathers a copy of the expert's weights per (token, expert) slot and keeps it for the
# backward — ~41 GB per MoE layer for 1,000 tokens at DeepSeek-OCR's dims (bf16, top-6).
CPU_EXPERTS_IMPLEMENTATION = "grouped_mm"
GPU_EXPERTS_IMPLEMENTATION = "grouped_mm"
GPU_FALLBACK_EXPERTS_IMPLEMENTATION = "eager"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as given, else CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """An explicit ``dtype`` (a torch dtype or a name such as ``"bf16"``) wins; otherwise bfloat16
    on CUDA GPUs that support it and float32 everywhere else (CPU, older GPUs — float16 training of
    MoE routers overflows too easily to be a silent default)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key == "auto":
            dtype = None
        elif key in _DTYPE_NAMES:
            return _DTYPE_NAMES[key]
        else:
            raise ValueError(f"dtype: unknown {dtype!r}; expected one of {', '.join(sorted(_DTYPE_NAMES))} or 'auto'")
    if dtype is None:
        if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    raise TypeError(f"dtype: expected a torch.dtype, a name or None, got {type(dtype).__name__}")


def choose_experts_implementation(device: str | torch.device) -> str:
    """The MoE experts implementation DeepSynth uses on ``device`` (see the constants above)."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        if torch.cuda.get_device_capability(index) >= (8, 0):
            return GPU_EXPERTS_IMPLEMENTATION
        return GPU_FALLBACK_EXPERTS_IMPLEMENTATION
    return CPU_EXPERTS_IMPLEMENTATION


def set_experts_implementation(model: PreTrainedModel, implementation: str | None, device: torch.device) -> None:
    """Apply ``implementation`` (None: :func:`choose_experts_implementation`) to a model with MoE experts."""
    can_set = getattr(type(model), "_can_set_experts_implementation", None)
    if not callable(can_set) or not can_set():
        return  # no experts module (dense causal LMs)
    choice = implementation or choose_experts_implementation(device)
    model.set_experts_implementation(choice)
    logger.info("MoE experts implementation: %s (%s)", choice, "requested" if implementation else f"auto for {device.type}")

