"""QLoRA: hold a base model's weights in 4 or 8 bits (bitsandbytes) and report how much of it is.

What is quantized, and how:

* every ``nn.Linear`` of the language model — through transformers' own ``BitsAndBytesConfig``
  path (``from_pretrained(..., quantization_config=...)``): NF4 with double quantization for
  ``"4bit"``, LLM.int8 (``Linear8bitLt``) for ``"8bit"``. The vision encoder, projector, router
  and ``lm_head`` stay in full precision (``llm_int8_skip_modules``); embeddings and norms are not
  ``nn.Linear`` and stay as they are too;
* the fused routed experts (3-D ``gate_up_proj`` / ``down_proj`` parameters, most of DeepSeek-OCR's
  weights), which bitsandbytes' ``nn.Linear`` replacement does not see: 4-bit as each is read from
  its shard (:func:`fused_experts_quantized_on_load`: NF4, double quantization, bitsandbytes'
  dequantizing parametrization), never held in full precision; 8-bit, after the load, through
  :class:`Int8RowwiseParametrization`, a small parametrization of ours over bitsandbytes' int8
  row-wise functions (bitsandbytes has no 8-bit counterpart of ``replace_parameter_4bit``).
  Both dequantize on access, so PEFT's routed-expert LoRA (``target_parameters``) stacks on top.

A model built from a config (the embedded model, benchmarks at real dimensions) has no checkpoint
to quantize while loading: it goes through the same transformers path with its in-memory
``state_dict`` (``from_pretrained(None, config=..., state_dict=...)``).

Compute dtype: the run's dtype — bf16 on GPUs that support it, fp32 on the CPU; the fused experts
dequantize to it. Unlike ``peft.prepare_model_for_kbit_training``, nothing unquantized is cast to
fp32 (:func:`prepare_quantized`).

bitsandbytes is the optional extra ``[qlora]``; :func:`require_bitsandbytes` fails early with the
install command when it is missing.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepsynth.models.families import family_names
from deepsynth.errors import ConfigError

__all__ = [
    "INSTALL_COMMAND",
    "QUANTIZATIONS",
    "Int8RowwiseParametrization",
    "QuantizationUnavailable",
    "bitsandbytes_available",
    "bnb_config",
    "dequantize_fused_experts",
    "dequantize_model",
    "estimate_quantization",
    "from_pretrained_kwargs",
    "fused_experts_quantized_on_load",
    "prepare_quantized",
    "quantization_report",
    "quantize_fused_experts",
    "quantize_in_memory",
    "require_bitsandbytes",
    "skip_modules",
]

LOGGER = logging.getLogger(__name__)

QUANTIZATIONS = {"4bit": 4, "8bit": 8}
INSTALL_COMMAND = "pip install 'deepsynth[qlora]'  (or: pip install 'bitsandbytes>=0.50,<0.51')"
_DESCRIPTIONS = {"4bit": "NF4 + double quantization", "8bit": "LLM.int8 / int8 row-wise"}
_LORA_TENSOR = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)\.|\.modules_to_save\.")


class QuantizationUnavailable(ConfigError):
    """A quantized preset was asked for, but bitsandbytes is not installed."""

    def __init__(self, quantization: str) -> None:
        self.field, self.value = "lora_quantization", quantization
        self.expected = f"bitsandbytes installed ({INSTALL_COMMAND})"
        ValueError.__init__(
            self, f"lora_quantization {quantization!r} (QLoRA) needs bitsandbytes, which is not installed; "
                  f"install it with: {INSTALL_COMMAND}")


def bitsandbytes_available() -> bool:
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


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


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
    _fix_peft_stacked_parametrizations()
    return model


@contextlib.contextmanager
def fused_experts_quantized_on_load(quantization: str | None, family: str) -> Iterator[None]:
    """While inside, a 4-bit ``from_pretrained`` also quantizes the fused routed experts as they are read.

    transformers' bitsandbytes quantizer converts ``nn.Linear`` weights as each shard is read but
    leaves 3-D expert tensors — most of DeepSeek-OCR's weights — in full precision, and transformers
    has no hook for other parameters: the quantizer it picks for ``load_in_4bit`` is swapped for a
    subclass (:class:`_FusedExperts4bitQuantizer`) for the duration of the load. Without a 4-bit
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
                self._fused_names = {f"{module_name}.{name}" for module_name, _, name in _fused_expert_tensors(model, family)}
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


# ------------------------------------------------------------------------------------------------
# Fused MoE experts
# ------------------------------------------------------------------------------------------------


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


def _fused_expert_tensors(model: nn.Module, family: str) -> Iterator[tuple[str, nn.Module, str]]:
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
    for _, module, name in list(_fused_expert_tensors(model, family)):
        parameter = getattr(module, name)
        count += parameter.numel()
        if parameter.dtype != dtype:  # quantize from the dtype it will dequantize to
            setattr(module, name, nn.Parameter(parameter.detach().to(dtype), requires_grad=False))
        if quantization == "4bit":
            replace_parameter_4bit(module, name, compress_statistics=True, quant_type="nf4")
        else:
            _replace_parameter_int8(module, name, dtype)
    return count


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
            if len(stacks[name]) != 1 or _bits_of_parametrization(stacks[name][0]) is None:
                continue
            quantizer, storage = stacks[name][0], stacks[name].original
            stand_in = _dequantized_stand_in(module, name)
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
            if _bits_of_parametrization(module.parametrizations[name][0]) is None:
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


# ------------------------------------------------------------------------------------------------
# Reports: what is held in how many bits
# ------------------------------------------------------------------------------------------------


def _bits_of_parametrization(module: nn.Module) -> int | None:
    kind = type(module).__name__
    return 4 if kind == "Bnb4bitParametrization" else 8 if kind == "Int8RowwiseParametrization" else None


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
            bits = _bits_of_parametrization(first)
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
    experts = sum(getattr(module, name).numel() for _, module, name in _fused_expert_tensors(model, family))
    base = sum(parameter.numel() for parameter in model.parameters())
    return _summary({"linear": linear, "fused_experts": experts}, base, QUANTIZATIONS[quantization],
                    quantization, None)


# ------------------------------------------------------------------------------------------------
# Library fixes
# ------------------------------------------------------------------------------------------------


def _dequantized_stand_in(module: nn.Module, name: str) -> torch.Tensor | None:
    """A zero-storage tensor with the dtype / shape / device of a 4/8-bit tensor's dequantized value."""
    stack = module.parametrizations[name]
    first, original = stack[0], stack.original
    bits = _bits_of_parametrization(first)
    if bits is None:
        return None
    shape = first.quant_state.shape if bits == 4 else original.shape
    dtype = first.quant_state.dtype if bits == 4 else first.dtype
    return torch.zeros((), dtype=dtype, device=original.device).expand(torch.Size(shape))


def _fix_peft_stacked_parametrizations() -> None:
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
            stand_in = _dequantized_stand_in(base, self.parameter_name)
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
