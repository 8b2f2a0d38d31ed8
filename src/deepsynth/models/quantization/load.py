"""Loading a base quantized: the bitsandbytes check, BitsAndBytesConfig, the scoped quantizer of the fused experts."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from deepsynth.errors import ConfigError
from deepsynth.models.families import family_names
from deepsynth.models.quantization.parametrizations import (
    fix_peft_stacked_parametrizations,
    fused_expert_tensors,
    quantize_fused_experts,
)

__all__ = [
    "INSTALL_COMMAND",
    "QUANTIZATIONS",
    "QuantizationUnavailable",
    "bitsandbytes_available",
    "bnb_config",
    "from_pretrained_kwargs",
    "fused_experts_quantized_on_load",
    "prepare_quantized",
    "quantize_in_memory",
    "require_bitsandbytes",
    "skip_modules",
]

QUANTIZATIONS = {"4bit": 4, "8bit": 8}
INSTALL_COMMAND = "pip install 'deepsynth[qlora]'  (or: pip install 'bitsandbytes>=0.50,<0.51')"


class QuantizationUnavailable(ConfigError):
    """A quantized preset was asked for, but bitsandbytes is not installed."""

    def __init__(self, quantization: str) -> None:
        self.field, self.value = "lora_quantization", quantization
        self.expected = f"bitsandbytes installed ({INSTALL_COMMAND})"
        ValueError.__init__(
            self, f"lora_quantization {quantization!r} (QLoRA) needs bitsandbytes, which is not installed; "
                  f"install it with: {INSTALL_COMMAND}")


def bitsandbytes_available() -> bool:
    """Whether bitsandbytes can be imported (the ``[qlora]`` extra)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def require_bitsandbytes(quantization: str | None) -> None:
    """Raise :class:`QuantizationUnavailable` (a ConfigError) when ``quantization`` needs a missing bitsandbytes."""
    if quantization is None:
        return
    if quantization not in QUANTIZATIONS:
        raise ConfigError("lora_quantization", quantization, "null, '4bit' or '8bit'")
    if not bitsandbytes_available():
        raise QuantizationUnavailable(quantization)
    _quiet_int8_cast_notice()


def skip_modules(family: str) -> list[str]:
    """Module-name patterns bitsandbytes must leave in full precision: vision side, router, lm_head.

    Same syntax as ``BitsAndBytesConfig.llm_int8_skip_modules`` (regex from the start of the name,
    up to a module boundary).
    """
    names = family_names(family)
    patterns = [re.escape(prefix.rstrip(".")) for prefix in names.frozen_prefixes]
    if names.router:
        patterns.append(names.layer_prefix + re.escape(f"{names.mlp}.{names.router}"))
    patterns.append("lm_head")
    return patterns


def bnb_config(quantization: str, family: str, compute_dtype: torch.dtype):
    """transformers' ``BitsAndBytesConfig`` of a quantized preset for ``family``."""
    from transformers import BitsAndBytesConfig

    skip = skip_modules(family)
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def from_pretrained_kwargs(quantization: str, family: str, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments that load the base quantized, on ``device``."""
    require_bitsandbytes(quantization)
    index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else None)
    return {"quantization_config": bnb_config(quantization, family, dtype),
            "device_map": {"": index if index is not None else device.type}}


def quantize_in_memory(model: nn.Module, extra: dict[str, Any]) -> nn.Module:
    """A model built in memory (no checkpoint), reloaded quantized through transformers' bitsandbytes path."""
    quantized = type(model).from_pretrained(None, config=model.config, state_dict=model.state_dict(),
                                            dtype=model.dtype, **extra)
    quantized.generation_config = model.generation_config
    quantized.config._name_or_path = model.config._name_or_path  # where the weights came from (PEFT reads it)
    return quantized


def prepare_quantized(model: nn.Module, quantization: str, family: str) -> nn.Module:
    """After a quantized load: 8-bit fused experts, frozen weights, and the library fixes LoRA needs.

    4-bit fused experts were quantized while their shard was read (:func:`fused_experts_quantized_on_load`).
    Unlike ``peft.prepare_model_for_kbit_training``, nothing is cast to fp32: that cast doubles every
    16-bit weight LoRA never touches (the vision path, embeddings, ``lm_head``) — at DeepSeek-OCR-2's
    real size it made the 4-bit preset peak above the bf16 one. The weights stay in the run's dtype
    (PEFT creates the adapter's own weights in fp32); checkpointing is the loader's job.
    """
    if quantization == "8bit":
        quantize_fused_experts(model, quantization, family, dtype=model.dtype)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    _keep_cpu_4bit_weights_trainable(model)
    fix_peft_stacked_parametrizations()
    return model


@contextlib.contextmanager
def fused_experts_quantized_on_load(quantization: str | None, family: str) -> Iterator[None]:
    """While inside, a 4-bit ``from_pretrained`` also quantizes the fused routed experts as they are read.

    transformers' bitsandbytes quantizer converts ``nn.Linear`` weights as each shard is read but
    leaves 3-D expert tensors — most of DeepSeek-OCR's weights — in full precision, and transformers
    has no hook for other parameters: the quantizer it picks for ``load_in_4bit`` is swapped for a
    subclass (``FusedExperts4bitQuantizer``) for the duration of the load. Without a 4-bit
    quantization, nothing changes.
    """
    if quantization != "4bit" or not family_names(family).routed_experts:
        yield
        return
    from transformers.quantizers import auto

    original = auto.AUTO_QUANTIZER_MAPPING["bitsandbytes_4bit"]
    auto.AUTO_QUANTIZER_MAPPING["bitsandbytes_4bit"] = _fused_experts_quantizer(original, family)
    try:
        yield
    finally:
        auto.AUTO_QUANTIZER_MAPPING["bitsandbytes_4bit"] = original


def _fused_experts_quantizer(base: type, family: str) -> type:
    """``base`` (transformers' 4-bit bitsandbytes quantizer) that also takes the fused expert tensors of ``family``.

    Each fused tensor reaches :meth:`convert` once transformers has assembled it from the shard (v1's
    per-expert tensors merged); it is stored as NF4 (double quantization, the dtype of the load) and its
    quantization state kept until the load ends, when the dequantizing parametrization is registered.
    """
    from bitsandbytes import functional as bnb_functional
    from bitsandbytes.nn.parametrize import replace_parameter_4bit_prequantized
    from transformers.core_model_loading import ConversionOps

    class QuantizeFusedOrLinear(ConversionOps):
        def __init__(self, quantizer) -> None:
            self.quantizer, self.linear = quantizer, base.get_quantize_ops(quantizer)

        def convert(self, input_dict, full_layer_name=None, model=None, **kwargs):
            if full_layer_name not in self.quantizer.fused_names(model):
                return self.linear.convert(input_dict, full_layer_name=full_layer_name, model=model, **kwargs)
            value = input_dict[full_layer_name]
            value = value[0] if isinstance(value, list) else value
            packed, state = bnb_functional.quantize_4bit(value, compress_statistics=True, quant_type="nf4")
            self.quantizer.fused_states[full_layer_name] = state
            return {full_layer_name: packed}

    class FusedExperts4bitQuantizer(base):
        def fused_names(self, model) -> set[str]:
            if not hasattr(self, "_fused_names"):
                self._fused_names = {f"{module_name}.{name}" for module_name, _, name in fused_expert_tensors(model, family)}
                self.fused_states = {}
            return self._fused_names

        def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
            return param_name in self.fused_names(model) or super().param_needs_quantization(model, param_name, **kwargs)

        def get_quantize_ops(self):
            return QuantizeFusedOrLinear(self)

        def _process_model_after_weight_loading(self, model, **kwargs):
            for name, state in getattr(self, "fused_states", {}).items():
                module_name, _, parameter = name.rpartition(".")
                replace_parameter_4bit_prequantized(model.get_submodule(module_name), parameter,
                                                    state.as_dict(), state.absmax.device)
            return super()._process_model_after_weight_loading(model, **kwargs)

    return FusedExperts4bitQuantizer


def _keep_cpu_4bit_weights_trainable(model: nn.Module) -> None:
    """Turn off bitsandbytes' in-place CPU repacking of 4-bit weights.

    bitsandbytes 0.50 repacks a ``Linear4bit`` weight for its AVX512-BF16 kernel on the first
    no-grad eval-mode forward on a CPU (a baseline evaluation, a generation), and from then on every
    forward, training included, goes through that kernel, which has no autograd: gradients stop at
    every 4-bit layer, silently (measured here: the input gradient is None). Keeping the standard
    layout costs CPU inference speed, not correctness; GPUs are unaffected.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


class _OnceFilter(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "inputs will be cast" not in record.getMessage():
            return True
        seen, self.seen = self.seen, True
        return not seen


def _quiet_int8_cast_notice() -> None:
    # bitsandbytes logs "inputs will be cast ... to float16" on every 8-bit matmul on the CPU:
    # expected (LLM.int8 quantizes fp16 activations), so say it once per process.
    target = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _OnceFilter) for f in target.filters):
        target.addFilter(_OnceFilter())

