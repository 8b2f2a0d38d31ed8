"""Reports of a quantized base: what a loaded model holds in 4/8 bits, what a preset would (on the meta device)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from deepsynth.models.quantization.load import QUANTIZATIONS, skip_modules
from deepsynth.models.quantization.parametrizations import bits_of_parametrization, fused_expert_tensors

__all__ = ["describe", "estimate_quantization", "quantization_report"]

_DESCRIPTIONS = {"4bit": "NF4 + double quantization", "8bit": "LLM.int8 / int8 row-wise"}
_LORA_TENSOR = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)\.|\.modules_to_save\.")


def _held_weights(model: nn.Module) -> Iterator[tuple[str, int, int | None]]:
    """(kind, logical parameter count, bits or None) of every base-model weight (adapters excluded).

    Class names are compared (not classes) so this works without importing bitsandbytes.
    """
    modules = dict(model.named_modules())
    for name, parameter in model.named_parameters():
        if _LORA_TENSOR.search(name):
            continue
        kind = type(parameter).__name__
        if kind == "Params4bit":
            shape = getattr(getattr(parameter, "quant_state", None), "shape", None)
            module = modules.get(name.rsplit(".", 1)[0])
            count = torch.Size(shape).numel() if shape is not None else module.in_features * module.out_features
            yield "linear", count, 4
        elif kind == "Int8Params":
            yield "linear", parameter.numel(), 8
        elif name.endswith(".original") and ".parametrizations." in name:
            first = modules[name.rsplit(".", 1)[0]][0]
            bits = bits_of_parametrization(first)
            if bits == 4:
                yield "fused_experts", torch.Size(first.quant_state.shape).numel(), 4
            elif bits == 8:
                yield "fused_experts", parameter.numel(), 8
            else:
                yield "other", parameter.numel(), None
        else:
            yield "other", parameter.numel(), None


def _summary(quantized: dict[str, int], base: int, bits: int, quantization: str, compute_dtype: str | None) -> dict[str, Any]:
    held = sum(quantized.values())
    fraction = held / base if base else 0.0
    return {
        "quantization": quantization,
        "bits": bits,
        "method": f"bitsandbytes {_DESCRIPTIONS[quantization]}",
        "quantized_params": held,
        "quantized_by_kind": quantized,
        "base_params": base,
        "full_precision_params": base - held,
        "quantized_fraction": round(fraction, 4),
        "compute_dtype": compute_dtype,
        "description": describe(bits, held, base),
    }


def describe(bits: int, held: int, base: int) -> str:
    """One line for people: the fraction comes first, so a mostly full-precision model never reads as 'N-bit'."""
    fraction = held / base if base else 0.0
    rest = "the rest (vision encoder, projector, router, embeddings, lm_head, norms) in full precision"
    if fraction < 0.5:
        return (f"mostly full precision: only {fraction:.1%} of the base weights ({held:,} of {base:,} parameters) "
                f"are held in {bits} bits; {rest}")
    return f"{fraction:.1%} of the base weights ({held:,} of {base:,} parameters) held in {bits} bits; {rest}"


def quantization_report(model: nn.Module) -> dict[str, Any] | None:
    """What the loaded ``model`` holds in 4/8 bits (None when nothing is quantized)."""
    quantized: dict[str, int] = {"linear": 0, "fused_experts": 0}
    base, bits_seen = 0, set()
    for kind, count, bits in _held_weights(model):
        base += count
        if bits is not None:
            quantized[kind] += count
            bits_seen.add(bits)
    if not bits_seen:
        return None
    bits = max(bits_seen)
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    compute = getattr(config, "bnb_4bit_compute_dtype", None) if bits == 4 else torch.float16
    return _summary(quantized, base, bits, f"{bits}bit", str(compute).removeprefix("torch.") if compute else None)


def estimate_quantization(model: nn.Module, family: str, quantization: str) -> dict[str, Any]:
    """What :func:`prepare_quantized` would hold in 4/8 bits, counted on a meta-device ``model``.

    Same rules as the loader: ``nn.Linear`` modules not matched by :func:`skip_modules` (transformers'
    own matching), plus the fused routed-expert tensors. Needs no bitsandbytes and no weights.
    """
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = skip_modules(family)
    linear = sum(module.weight.numel() for name, module in model.named_modules()
                 if type(module) is nn.Linear and should_convert_module(name, skip))
    experts = sum(getattr(module, name).numel() for _, module, name in fused_expert_tensors(model, family))
    base = sum(parameter.numel() for parameter in model.parameters())
    return _summary({"linear": linear, "fused_experts": experts}, base, QUANTIZATIONS[quantization],
                    quantization, None)

