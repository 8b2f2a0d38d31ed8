"""Load a model and its processor from a name or a directory, for training or inference.

One entry point, :func:`load_model_and_processor`, for every family:

* ``deepseek_ocr2`` — the embedded tiny model (default), DeepSeek-OCR-2 hub names or local
  directories, through transformers' native ``DeepseekOcr2ForConditionalGeneration``;
* ``deepseek_ocr`` — DeepSeek-OCR v1 checkpoints (their ``config.json`` says
  ``model_type: deepseek_vl_v2``) through transformers' native ``UnlimitedOcrForConditionalGeneration``,
  never the checkpoint's remote code (it needs transformers < 4.48 and calls ``.cuda()``);
* ``causal_lm`` — any text causal LM (``AutoModelForCausalLM`` + ``AutoTokenizer``) for text-only
  summarisation.

What a name means (family, config, class) is decided once, by
:func:`deepsynth.models.resolver.resolve_config`; this module only loads weights, builds processors,
places the model and freezes the vision side.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoProcessor,
    AutoTokenizer,
    DeepseekOcr2ForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from deepsynth.models import tiny
from deepsynth.models.device import resolve_device, resolve_dtype, set_experts_implementation
from deepsynth.models.families import CAUSAL_LM, DEEPSEEK_OCR2, family_names
from deepsynth.models.image_modes import ImageMode, checkpoint_settings, mode_of_resolved
from deepsynth.models.memory import return_freed_memory, shards_read_without_mmap, storage_dtype, upcast
from deepsynth.models.processors import apply_image_mode, build_deepseek_ocr_processor
from deepsynth.models.quantization.load import (
    from_pretrained_kwargs,
    fused_experts_quantized_on_load,
    prepare_quantized,
    quantize_in_memory,
)
from deepsynth.models.resolver import ResolvedConfig, resolve_config
from deepsynth.models.tiny import EMBEDDED_MODEL_NAME
from deepsynth.paths import looks_like_local_path

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "freeze_vision_modules",
    "load_model_and_processor",
    "load_tokenizer",
    "weights_broadcast_from_rank0",
]

logger = logging.getLogger(__name__)

class ModelLoadError(ValueError):
    """A model name or directory could not be loaded; the message says what was tried."""


@dataclass
class LoadedModel:
    """A model ready for training or inference, with what prepares its inputs.

    ``processor`` is a multimodal processor for the OCR families and the tokenizer for
    ``causal_lm``. ``loading_info`` holds transformers' report (missing / unexpected keys) when
    weights were read from a checkpoint.
    """

    model: PreTrainedModel
    processor: Any
    family: str
    name: str
    loading_info: dict[str, list[str]] = field(default_factory=dict)
    # The resolution mode the processor reads pages in (None for text models).
    image_mode: ImageMode | None = None
    # The dtype the run computes in; the weights may still be narrower (``load_model_and_processor``'s
    # ``staged_upcast``) until :meth:`finish_upcast`.
    dtype: torch.dtype | None = None
    # The dtype the checkpoint's weights are stored in (its config.json), None when unknown.
    stored_dtype: torch.dtype | None = None

    def finish_upcast(self) -> int:
        """Cast the weights still narrower than the run's dtype to it (after a staged load); returns how many."""
        from deepsynth.models.memory import upcast

        return upcast(self.model, self.dtype) if self.dtype is not None else 0

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer, whichever family (a processor's ``tokenizer`` or the processor itself)."""
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def is_multimodal(self) -> bool:
        return family_names(self.family).multimodal


# ------------------------------------------------------------------------------------------------
# Freezing
# ------------------------------------------------------------------------------------------------


def freeze_vision_modules(model: torch.nn.Module, family: str) -> int:
    """Freeze the vision encoder, projector and separators of an OCR-family model.

    Returns how many parameters were frozen (0 for text-only families). The language model is
    left as it was.
    """
    names = family_names(family)
    if not names.multimodal:
        return 0
    prefixes = names.frozen_prefixes
    frozen = 0
    for name, parameter in model.named_parameters():
        if name.startswith(prefixes):
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    return frozen


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _from_source(loader, source: str, is_local: bool, what: str, **kwargs):
    """Call ``loader(source, ...)`` locally first; go to the Hub only for a hub name and when online."""
    try:
        return loader(source, local_files_only=True, **kwargs)
    except Exception as local_error:  # transformers raises OSError, ValueError or RuntimeError
        not_found = isinstance(local_error, (OSError, ValueError)) and not is_local
        if not not_found:
            where = f"directory {source}" if is_local else f"the cached copy of {source!r}"
            raise ModelLoadError(
                f"model: could not load the {what} from {where}: {type(local_error).__name__}: {local_error}"
            ) from local_error
        if _hub_offline():
            raise ModelLoadError(
                f"model: {source!r} — the {what} is not in the local Hugging Face cache and the Hub is offline "
                "(HF_HUB_OFFLINE=1); pass a local directory or download it first"
            ) from local_error
    try:
        return loader(source, **kwargs)
    except Exception as hub_error:  # any download failure becomes one clear error for the user
        raise ModelLoadError(
            f"model: {source!r} — tried the local Hugging Face cache and the Hub; the {what} could not be "
            f"loaded ({type(hub_error).__name__}: {hub_error})"
        ) from hub_error


def weights_broadcast_from_rank0() -> bool:
    """Whether this process skips reading the weights: under accelerate's FSDP with
    ``fsdp_cpu_ram_efficient_loading`` rank 0 alone reads them and accelerate broadcasts each tensor
    while sharding, so the other ranks need the shapes only (transformers 5.25 still reads the
    checkpoint on every rank: N processes on one host would hold N copies while loading)."""
    from transformers.integrations import is_fsdp_enabled

    return is_fsdp_enabled() and torch.distributed.get_rank() != 0


def _shapes_only(model_class: type, config: Any, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """The model with its parameters on the meta device (buffers real: accelerate re-registers them)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = model_class._from_config(config, **({"dtype": dtype} if dtype is not None else {}))
    logger.info("rank %d: weights not read (rank 0 reads them; accelerate broadcasts them while sharding)",
                torch.distributed.get_rank())
    return model


def _embedded_shapes_only() -> tuple[PreTrainedModel, Any]:
    checkpoint = tiny.shipped_checkpoint()
    if checkpoint is None:  # the cached random-init model: small, read as usual
        return tiny.load_embedded()
    config = AutoConfig.from_pretrained(str(checkpoint), local_files_only=True)
    model = _shapes_only(DeepseekOcr2ForConditionalGeneration, config)
    tiny._set_generation_ids(model)  # as tiny.load_embedded does
    return model.eval(), tiny.build_processor()


def _on_meta(model: torch.nn.Module) -> bool:
    return any(parameter.is_meta for parameter in model.parameters())


def _load_weights(
    resolved: ResolvedConfig, dtype: torch.dtype, extra: dict[str, Any] | None = None, quantization: str | None = None
) -> tuple[PreTrainedModel, dict[str, list[str]]]:
    source = str(resolved.local_dir or resolved.name)
    is_local = resolved.local_dir is not None
    model_class = resolved.model_class
    if not extra and weights_broadcast_from_rank0():
        return _shapes_only(model_class, resolved.config, dtype), {}  # nothing read: nothing missing

    def loader(src: str, **kwargs):
        # Shard by shard within memory: no mmap'd shard stays resident, 4-bit experts quantized as read.
        with shards_read_without_mmap(), _quantized_on_load(quantization, resolved.family):
            return model_class.from_pretrained(src, config=resolved.config, dtype=dtype, output_loading_info=True,
                                               **(extra or {}), **kwargs)

    model, info = _from_source(loader, source, is_local, "weights")
    keys = ("missing_keys", "unexpected_keys", "mismatched_keys")
    info = {key: sorted(str(name) for name in info.get(key, ())) for key in keys}
    # A missing tensor would be silently random: refuse rather than fine-tune garbage.
    problems = {key: names for key, names in info.items() if names}
    if problems:
        details = "; ".join(
            f"{key}: {', '.join(names[:8])}{' …' if len(names) > 8 else ''}" for key, names in problems.items()
        )
        raise ModelLoadError(
            f"model: checkpoint {source} does not match its {resolved.family} architecture ({details})"
        )
    return model, info


def _quantized_on_load(quantization: str | None, family: str):
    if quantization is None:
        return contextlib.nullcontext()
    return fused_experts_quantized_on_load(quantization, family)


def _load_tokenizer(resolved: ResolvedConfig) -> PreTrainedTokenizerBase:
    source = str(resolved.local_dir or resolved.name)
    # config= keeps AutoTokenizer from re-reading config.json (DeepSeek-OCR's says deepseek_vl_v2,
    # which transformers does not know and warns about).
    return _from_source(
        AutoTokenizer.from_pretrained, source, resolved.local_dir is not None, "tokenizer", config=resolved.config
    )


def _ocr_processor(resolved: ResolvedConfig, mode: ImageMode) -> Any:
    source = str(resolved.local_dir or resolved.name)
    is_local = resolved.local_dir is not None
    if resolved.family == DEEPSEEK_OCR2:
        return apply_image_mode(_from_source(AutoProcessor.from_pretrained, source, is_local, "processor"), mode)
    # DeepSeek-OCR v1: its own processor_config names the remote-code DeepseekVLV2Processor, so build
    # transformers' UnlimitedOcrProcessor from the tokenizer and the checkpoint's settings.
    return build_deepseek_ocr_processor(_load_tokenizer(resolved), checkpoint_settings(resolved), mode)


def _align_image_token(resolved: ResolvedConfig, processor: Any) -> None:
    """Use the tokenizer's ``<image>`` id: DeepSeek-OCR's config.json does not record it."""
    token_id = getattr(processor, "image_token_id", None)
    if token_id is None or getattr(resolved.config, "image_token_id", token_id) == token_id:
        return
    vocab_size = resolved.config.text_config.vocab_size
    if not 0 <= token_id < vocab_size:
        raise ModelLoadError(
            f"model: {resolved.name} — the tokenizer's image token id {token_id} "
            f"is outside the vocabulary ({vocab_size})"
        )
    logger.info(
        "model %s: image_token_id %s → %s (from the tokenizer)", resolved.name, resolved.config.image_token_id, token_id
    )
    resolved.config.image_token_id = token_id


def _enable_checkpointing(model: PreTrainedModel) -> None:
    # Non-reentrant checkpointing: works with frozen inputs (no enable_input_require_grads hack)
    # and with PEFT. transformers >= 5.2x renamed the API; keep the old name as a fallback.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    for config in (model.config, getattr(model.config, "text_config", None)):
        if config is not None and hasattr(config, "use_cache"):
            config.use_cache = False  # a KV cache is useless under checkpointing and warns every step


def _quantized_experts_need_recompute(quantization: str | None, family: str) -> bool:
    """Quantized fused experts are dequantized on access, and autograd keeps each MoE layer's dequantized
    experts for the backward — at DeepSeek-OCR's size ~9.7 GB in fp32, the whole saving of 4 bits.
    Recomputing each decoder layer in the backward (activation checkpointing, the QLoRA recipe's
    default too) keeps one layer's at a time."""
    if quantization is None or not family_names(family).routed_experts:
        return False
    logger.info("activation checkpointing on: quantized fused experts are dequantized again in the backward "
                "instead of being kept for it")
    return True


def _resolve(name_or_path: str | None) -> ResolvedConfig:
    if name_or_path is not None:
        name = str(name_or_path)
        if looks_like_local_path(name) and not Path(name).expanduser().exists():
            raise ModelLoadError(f"model: {name!r} looks like a local path but does not exist")
    try:
        return resolve_config(name_or_path)
    except ModelLoadError:
        raise
    except (ValueError, OSError) as error:
        message = str(error) if str(error).startswith("model:") else f"model: {name_or_path!r}: {error}"
        raise ModelLoadError(message) from error


def load_tokenizer(name_or_path: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a model (None: the embedded default), without loading its weights.

    Raises:
        ModelLoadError: the model or its tokenizer cannot be found (offline and not cached, bad path).
    """
    resolved = _resolve(name_or_path)
    if resolved.name == EMBEDDED_MODEL_NAME:
        return tiny.shipped_tokenizer()
    return _load_tokenizer(resolved)


def _load_base(resolved: ResolvedConfig, mode: ImageMode | None, dtype: torch.dtype, extra: dict[str, Any],
               quantization: str | None, staged_upcast: bool) -> tuple[PreTrainedModel, Any, dict[str, list[str]]]:
    """The weights (quantized per ``extra``) and the processor of ``resolved``, before placement and freezing."""
    if resolved.name == EMBEDDED_MODEL_NAME:
        model, processor = _embedded_shapes_only() if weights_broadcast_from_rank0() else tiny.load_embedded()
        model = model.to(dtype=dtype)
        if extra:
            with _quantized_on_load(quantization, resolved.family):
                model = quantize_in_memory(model, extra)
        return model, apply_image_mode(processor, mode), {}
    if resolved.family == CAUSAL_LM:
        processor = _load_tokenizer(resolved)
        if processor.pad_token is None:
            # Batches need a pad id; labels mask padding with -100, so reusing EOS is harmless.
            processor.pad_token = processor.eos_token
        model, info = _load_weights(resolved, dtype, extra, quantization)
        return model, processor, info
    processor = _ocr_processor(resolved, mode)
    _align_image_token(resolved, processor)
    stored = storage_dtype(resolved.local_dir) if quantization is None else None
    narrower = stored is not None and torch.finfo(stored).bits < torch.finfo(dtype).bits
    model, info = _load_weights(resolved, stored if narrower else dtype, extra, quantization)
    if narrower and not staged_upcast:
        # Loaded as stored, then cast one tensor at a time (exact for bf16 → fp32): a direct fp32 load
        # peaked ~7 GB above the fp32 model at DeepSeek-OCR's size (generate/eval, docs/performance.md).
        upcast(model, dtype)
        return_freed_memory()
    return model, processor, info


def load_model_and_processor(
    name_or_path: str | Path | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    gradient_checkpointing: bool = False,
    freeze_vision: bool = True,
    experts_implementation: str | None = None,
    quantization: str | None = None,
    image_mode: str | None = None,
    staged_upcast: bool = False,
) -> LoadedModel:
    """Load ``name_or_path`` (None = the embedded tiny DeepSeek-OCR-2) with its processor.

    Args:
        name_or_path: ``deepsynth/tiny-ocr2`` or None, a hub name (``deepseek-community/DeepSeek-OCR-2``…)
            or a local checkpoint directory of any supported family.
        dtype: explicit dtype (``torch.bfloat16`` or ``"bf16"``…); default bfloat16 on CUDA GPUs that
            support it, float32 otherwise.
        device: default CUDA when available, else CPU.
        gradient_checkpointing: enable transformers' non-reentrant activation checkpointing (and
            turn the KV cache off, which checkpointing cannot use).
        freeze_vision: set ``requires_grad=False`` on the vision encoder, projector and separators.
        experts_implementation: transformers' MoE experts implementation (``"eager"``,
            ``"batched_mm"``, ``"grouped_mm"``); None picks the measured choice for the device
            (:func:`choose_experts_implementation`). Ignored by models without MoE experts.
        quantization: ``"4bit"`` / ``"8bit"``: QLoRA base, see :mod:`deepsynth.models.quantization`
            (needs bitsandbytes; the model is then placed by ``device_map``).
        image_mode: resolution mode of the OCR families (:mod:`deepsynth.models.image_modes`); None:
            the model's default. The processor reads pages in it; ``LoadedModel.image_mode`` says which.
        staged_upcast: a checkpoint stored narrower than ``dtype`` (bf16 weights, a fp32 run) is loaded
            as stored; the caller encodes its pages (vision path upcast first), releases the vision path
            and calls ``LoadedModel.finish_upcast`` — so the whole model never exists in ``dtype``
            (:mod:`deepsynth.models.memory`). Ignored with ``quantization``.

    Raises:
        ModelLoadError: (a ValueError) naming the ``model`` argument and what was tried.
        ConfigError: (a ValueError) an ``image_mode`` the model's family does not have.
    """
    resolved = _resolve(None if name_or_path is None else str(name_or_path))
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device)
    mode = mode_of_resolved(resolved, image_mode)  # a wrong mode fails before any weight is read
    # bitsandbytes is checked (and imported) only when a quantization is asked for.
    extra = ({} if quantization is None
             else from_pretrained_kwargs(quantization, resolved.family, target_dtype, target_device))
    model, processor, loading_info = _load_base(resolved, mode, target_dtype, extra, quantization, staged_upcast)
    if extra:
        model = prepare_quantized(model, quantization, resolved.family)
    elif not _on_meta(model):  # weights_broadcast_from_rank0: placed by accelerate while sharding
        model = model.to(device=target_device)
    set_experts_implementation(model, experts_implementation, target_device)
    if freeze_vision:
        freeze_vision_modules(model, resolved.family)
    if gradient_checkpointing or _quantized_experts_need_recompute(quantization, resolved.family):
        _enable_checkpointing(model)
    return LoadedModel(
        model=model, processor=processor, family=resolved.family, name=resolved.name, loading_info=loading_info,
        image_mode=mode, dtype=target_dtype, stored_dtype=storage_dtype(resolved.local_dir),
    )
