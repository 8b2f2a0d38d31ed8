"""Back to full precision: a quantized base as plain weights (merging), or plain stand-ins while PEFT injects."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepsynth.models.quantization.parametrizations import bits_of_parametrization, dequantized_stand_in

__all__ = ["dequantize_fused_experts", "dequantize_model", "plain_fused_experts"]


@contextlib.contextmanager
def plain_fused_experts(model: nn.Module) -> Iterator[None]:
    """Show PEFT plain fused-expert tensors while it injects an adapter (quantized storage kept aside).

    Why: PEFT nests the two routed-expert LoRA wrappers of an experts module in a different order
    when the tensors are parametrized (sorted names: ``down_proj`` inside) than when they are plain
    Parameters (definition order: ``gate_up_proj`` inside), and the saved adapter's names follow the
    nesting. Injecting against plain tensors gives QLoRA adapters the same names as full-precision
    ones, so either loads on the other base. The stand-ins have no storage (dtype/shape/device only;
    PEFT reads nothing else while injecting); the quantized storage is put back afterwards.
    """
    saved = []
    for module in model.modules():
        stacks = getattr(module, "parametrizations", None)
        for name in list(stacks or {}):
            if len(stacks[name]) != 1 or bits_of_parametrization(stacks[name][0]) is None:
                continue
            quantizer, storage = stacks[name][0], stacks[name].original
            stand_in = dequantized_stand_in(module, name)
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
            setattr(module, name, nn.Parameter(stand_in, requires_grad=False))
            saved.append((module, name, storage, quantizer))
    try:
        yield
    finally:
        for module, name, storage, quantizer in saved:
            setattr(module, name, storage)
            parametrize.register_parametrization(module, name, quantizer, unsafe=True)


def dequantize_fused_experts(model: nn.Module, dtype: torch.dtype = torch.float32) -> int:
    """Replace each 4/8-bit fused-expert tensor by its dequantized value (a plain Parameter); returns how many."""
    count = 0
    for module in list(model.modules()):
        for name in list(getattr(module, "parametrizations", {}) or {}):
            if bits_of_parametrization(module.parametrizations[name][0]) is None:
                continue
            value = getattr(module, name).detach().to(dtype).clone()
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
            setattr(module, name, nn.Parameter(value, requires_grad=False))
            count += 1
    return count


def dequantize_model(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The quantized base as a plain full-precision model (the weights it trained on), for merging.

    Fused experts lose their parametrization (:func:`dequantize_fused_experts`); the bitsandbytes
    linear layers go back to ``nn.Linear`` through transformers' ``dequantize``, which also drops
    the model's ``quantization_config``.
    """
    dequantize_fused_experts(model, dtype)
    if getattr(model, "hf_quantizer", None) is not None:
        model = model.dequantize(dtype=dtype)
    for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit"):  # PEFT reads these flags
        if getattr(model, flag, False):
            setattr(model, flag, False)
    return model

