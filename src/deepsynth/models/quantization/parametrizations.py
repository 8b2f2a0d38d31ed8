"""Dequantizing parametrizations of the fused routed experts, and the PEFT fixes that let LoRA stack on them."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepsynth.models.families import family_names

__all__ = [
    "Int8RowwiseParametrization",
    "bits_of_parametrization",
    "dequantized_stand_in",
    "fix_peft_stacked_parametrizations",
    "fused_expert_tensors",
    "quantize_fused_experts",
]


class Int8RowwiseParametrization(nn.Module):
    """Dequantizes an int8 tensor (one absmax scale per row of its last dimension) on access.

    The storage format is bitsandbytes' LLM.int8 weight format (``int8_vectorwise_quant``); this
    only applies it to a parameter that is not an ``nn.Linear`` weight (fused 3-D experts).
    """

    def __init__(self, scales: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("scales", scales)
        self.dtype = dtype

    @torch.no_grad()
    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        from bitsandbytes.functional import int8_vectorwise_dequant

        rows = quantized.reshape(-1, quantized.shape[-1])
        return int8_vectorwise_dequant(rows, self.scales).reshape(quantized.shape).to(self.dtype)


def _replace_parameter_int8(module: nn.Module, name: str, dtype: torch.dtype) -> None:
    from bitsandbytes.functional import int8_vectorwise_quant

    weight = getattr(module, name).detach()
    quantized, scales, _ = int8_vectorwise_quant(weight.reshape(-1, weight.shape[-1]).to(torch.float16))
    setattr(module, name, nn.Parameter(quantized.reshape(weight.shape), requires_grad=False))
    parametrize.register_parametrization(module, name, Int8RowwiseParametrization(scales, dtype), unsafe=True)
    _cache_dequantized_per_forward(module)


def _cache_dequantized_per_forward(module: nn.Module) -> None:
    # Per-expert ("eager") code reads the fused tensor once per expert: dequantize it once per
    # forward, using torch's parametrization cache for the duration of the module's forward.
    if getattr(module, "_deepsynth_dequant_cache", False):
        return

    def enter(mod, args):
        parametrize._cache_enabled += 1

    def leave(mod, args, output):
        parametrize._cache_enabled = max(0, parametrize._cache_enabled - 1)
        if not parametrize._cache_enabled:
            parametrize._cache = {}

    module.register_forward_pre_hook(enter)
    module.register_forward_hook(leave, always_call=True)
    module._deepsynth_dequant_cache = True


def fused_expert_tensors(model: nn.Module, family: str) -> Iterator[tuple[str, nn.Module, str]]:
    """(module name, experts module, parameter name) of every fused 3-D routed-expert tensor."""
    names = family_names(family)
    if not names.routed_experts:
        return
    pattern = re.compile("^(?:base_model\\.model\\.)?" + names.layer_prefix
                         + re.escape(f"{names.mlp}.{names.routed_experts}") + "$")
    for module_name, module in model.named_modules():
        if pattern.match(module_name):
            for name, parameter in list(module.named_parameters(recurse=False)):
                if parameter.dim() == 3:
                    yield module_name, module, name


def quantize_fused_experts(model: nn.Module, quantization: str, family: str, dtype: torch.dtype = torch.float32) -> int:
    """Hold the fused routed-expert tensors in 4/8 bits; returns how many parameters that covers."""
    from bitsandbytes.nn.parametrize import replace_parameter_4bit

    count = 0
    for _, module, name in list(fused_expert_tensors(model, family)):
        parameter = getattr(module, name)
        count += parameter.numel()
        if parameter.dtype != dtype:  # quantize from the dtype it will dequantize to
            setattr(module, name, nn.Parameter(parameter.detach().to(dtype), requires_grad=False))
        if quantization == "4bit":
            replace_parameter_4bit(module, name, compress_statistics=True, quant_type="nf4")
        else:
            _replace_parameter_int8(module, name, dtype)
    return count


def bits_of_parametrization(module: nn.Module) -> int | None:
    """4 or 8 for one of the dequantizing parametrizations here or of bitsandbytes, None for any other module."""
    kind = type(module).__name__
    return 4 if kind == "Bnb4bitParametrization" else 8 if kind == "Int8RowwiseParametrization" else None


def dequantized_stand_in(module: nn.Module, name: str) -> torch.Tensor | None:
    """A zero-storage tensor with the dtype / shape / device of a 4/8-bit tensor's dequantized value."""
    stack = module.parametrizations[name]
    first, original = stack[0], stack.original
    bits = bits_of_parametrization(first)
    if bits is None:
        return None
    shape = first.quant_state.shape if bits == 4 else original.shape
    dtype = first.quant_state.dtype if bits == 4 else first.dtype
    return torch.zeros((), dtype=dtype, device=original.device).expand(torch.Size(shape))


def fix_peft_stacked_parametrizations() -> None:
    """Let PEFT's routed-expert LoRA stack on a dequantizing parametrization (PEFT 0.21).

    Two things in PEFT's ``ParamWrapper`` assume the expert tensor is a plain Parameter:

    * the second wrapper of an experts module (``gate_up_proj`` and ``down_proj`` are wrapped one
      inside the other) registers its LoRA proxy while the first one has torch's parametrization
      cache on; registering reads the tensor, so its value *without* the LoRA is cached and the
      forward uses it: that LoRA is silently left out and never trains. The fix drops the stale
      cache entry once the proxy is registered;
    * it reads the tensor (``get_param``) only for its dtype and device; each read of a quantized
      tensor is a full dequantization, so those reads get a zero-storage stand-in;
    * after the forward it removes only a ``_LoraParameterProxy`` from a stack of several
      parametrizations, leaving its ``_LoraFactorsProxy`` behind, and the next forward fails.

    Nothing changes for plain parameters. Checked by tests/models/test_quantization.py (every
    routed-expert LoRA tensor trains; logits equal those of the dequantized model + adapter).
    """
    from peft.tuners.lora import layer

    wrapper = layer.ParamWrapper
    factors = getattr(layer, "_LoraFactorsProxy", None)
    if factors is None or getattr(wrapper, "_deepsynth_stacking_fix", False):
        return
    original_remove, original_get = wrapper._remove_parametrizations, wrapper.get_param
    original_activate = wrapper._activate_lora

    @contextlib.contextmanager
    def activate_lora(self, active_adapters):
        with original_activate(self, active_adapters):
            parametrize._cache.pop((id(self.get_base_layer()), self.parameter_name), None)
            yield

    def get_param(self):
        base = self.get_base_layer()
        if parametrize.is_parametrized(base, self.parameter_name):
            stand_in = dequantized_stand_in(base, self.parameter_name)
            if stand_in is not None:
                return stand_in
        return original_get(self)

    def remove_parametrizations(self) -> None:
        stack = self.get_base_layer().parametrizations[self.parameter_name]
        if len(stack) > 1 and isinstance(stack[-1], factors):
            del stack[-1]
            return
        original_remove(self)

    wrapper.get_param = get_param
    wrapper._activate_lora = activate_lora
    wrapper._remove_parametrizations = remove_parametrizations
    wrapper._deepsynth_stacking_fix = True

