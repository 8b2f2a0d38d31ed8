"""Frozen-encoder feature cache: run the vision encoder once per unique page, not once per step.

DeepSynth trains LoRA on the language model of DeepSeek-OCR-family models; the vision encoder
(SAM + encoder), the projector and the view separators are frozen and pages are not augmented
(there is no image augmentation anywhere in DeepSynth today). Each page's vision features are then
a constant of the run, yet a plain training loop recomputes them at every step — 300 times per
page in the seed's tiny-data recipe (3 samples, 300 epochs). This module computes them once:

* :func:`cache_applicable` says whether caching is exact for a model and config (and why not);
* :func:`precompute_image_features` runs ``model.get_image_features`` once per unique image
  (examples are deduplicated by a SHA-256 of their image inputs), under ``torch.no_grad()`` with
  the model in eval mode, and replaces each example's image inputs (``pixel_values``,
  ``pixel_values_local``, ``num_local_patches``, ``patches_grid``) by the cached feature tensor
  (``image_features``: one ``[vision tokens, hidden]`` tensor per example, the model's own
  ``pooler_output`` — local tiles, global view, row newlines and separators included);
* :class:`CachedFeatureCollator` wraps a :class:`~deepsynth.data.collate.DataCollator`: batches of
  cached examples get ``mm_encoder_outputs={"image": CachedImageFeatures(pooler_output=[...])}``,
  which the native ``DeepseekOcr2ForConditionalGeneration`` / ``UnlimitedOcrForConditionalGeneration``
  accept instead of pixels (they scatter the features into the image-token positions exactly as
  they do with their own encoder output). Uncached batches (e.g. an eval set) pass through unchanged.

The result is the same training run: the features are those the model computes for the same
page in the same dtype (bit-identical with batch size 1; with larger batches the uncached run
encodes pages in a batch, which can differ in the last float bits), the vision path has no dropout
(refused otherwise) and consumes no random numbers, so LoRA dropout and data order follow the same
RNG stream (tests/training/test_feature_cache.py checks per-update losses against an uncached run).
Features live on the CPU (``max_bytes``, 4 GiB by default, bounds them).

Wiring in a trainer (after LoRA is applied and examples are encoded)::

    ok, reason = cache_applicable(model, loaded.family, config)
    stats = precompute_image_features(model, train_examples) if ok else None
    collator = CachedFeatureCollator(DataCollator(loaded.processor))
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import MutableSequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from deepsynth.models.families import FAMILY_NAMES, family_names

__all__ = [
    "FEATURES_KEY",
    "IMAGE_INPUT_KEYS",
    "CacheStats",
    "CachedFeatureCollator",
    "CachedImageFeatures",
    "cache_applicable",
    "image_key",
    "precompute_image_features",
]

# Image inputs produced by the OCR-family processors (build_example keeps them per example).
IMAGE_INPUT_KEYS = ("pixel_values", "pixel_values_local", "num_local_patches", "patches_grid")
# Where a cached example keeps its vision features.
FEATURES_KEY = "image_features"
# Default bound on the cache's memory (features are small: ~0.7 MB per page at DeepSeek-OCR's
# 1,280-wide hidden size in bf16, 257 vision tokens; 4 GiB holds ~6,000 such pages).
DEFAULT_MAX_BYTES = 4 * 2**30
# Config fields that would make the (frozen) vision path random in training mode.
_DROPOUT_FIELDS = ("attention_dropout", "dropout", "hidden_dropout", "hidden_dropout_prob",
                   "attention_probs_dropout_prob", "drop_path_rate")


@dataclass
class CacheStats:
    """What :func:`precompute_image_features` did."""

    examples: int = 0  # examples given
    cached_examples: int = 0  # examples that now carry cached features (already-cached ones included)
    unique_images: int = 0  # distinct images in the examples
    encoder_calls: int = 0  # get_image_features calls made (= new unique images)
    seconds: float = 0.0  # wall time of the encoder calls and hashing
    feature_bytes: int = 0  # memory held by the cached feature tensors
    skipped: str | None = None  # why nothing was cached (memory bound), None when it was

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CachedImageFeatures(BaseModelOutputWithPooling):
    """``mm_encoder_outputs["image"]`` built from cached features (``pooler_output``: one tensor per image).

    A ``BaseModelOutputWithPooling`` as the native models expect, plus ``pin_memory()``: torch's
    DataLoader pins a mapping by copying it and calling ``update()``, which every ``ModelOutput``
    refuses; it calls an object's own ``pin_memory()`` first, so CUDA runs with
    ``dataloader_pin_memory=True`` work.
    """

    def pin_memory(self) -> CachedImageFeatures:
        return CachedImageFeatures(pooler_output=[tensor.pin_memory() for tensor in self.pooler_output])


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (or ``model`` itself)."""
    getter = getattr(model, "get_base_model", None)
    return getter() if callable(getter) else model


def _config_dropout(config: Any, path: str = "vision_config") -> str | None:
    """Name of a dropout setting > 0 in a (nested) vision config, or None."""
    if config is None:
        return None
    values = config.to_dict() if hasattr(config, "to_dict") else config
    if not isinstance(values, dict):
        return None
    for key, value in values.items():
        if isinstance(value, dict):
            found = _config_dropout(value, f"{path}.{key}")
            if found:
                return found
        elif key in _DROPOUT_FIELDS and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return f"{path}.{key}={value}"
    return None


def cache_applicable(model: nn.Module, family: str, config: Any = None) -> tuple[bool, str]:
    """Whether caching vision features is exact for ``model`` (of ``family``) and ``config``.

    ``config`` is a TrainerConfig or None; its ``use_feature_cache`` (default True = auto) turns the
    cache off. DeepSynth has no image augmentation: were one added, it must turn the cache off here.
    Returns ``(applicable, reason)``; the reason names what blocks the cache.
    """
    if config is not None and getattr(config, "use_feature_cache", True) is False:
        return False, "disabled by the config (use_feature_cache: false)"
    if family not in FAMILY_NAMES:
        return False, f"unknown model family {family!r}"
    if not family_names(family).multimodal:
        return False, "text causal LM: no vision encoder to cache"
    base = _base_model(model)
    if not callable(getattr(base, "get_image_features", None)):
        return False, f"{type(base).__name__} has no get_image_features"
    prefixes = family_names(family).frozen_prefixes
    for name, parameter in base.named_parameters():
        if name.startswith(prefixes) and parameter.requires_grad:
            return False, f"vision parameter {name} is trainable: its features change at every update"
    for name, module in base.named_modules():
        if name.startswith(prefixes) and isinstance(module, nn.Dropout) and module.p > 0:
            return False, f"dropout p={module.p} in the vision path ({name}): features are random in training"
    dropout = _config_dropout(getattr(base.config, "vision_config", None))
    if dropout:
        return False, f"dropout in the vision path ({dropout}): features are random in training"
    return True, "vision encoder, projector and separators frozen, no dropout, no augmentation"


def _update_digest(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    else:
        digest.update(repr(value).encode())


def image_key(example: dict[str, Any]) -> str:
    """SHA-256 of an example's image inputs (values, shapes and dtypes): equal keys ⇔ equal features."""
    digest = hashlib.sha256()
    for key in IMAGE_INPUT_KEYS:
        if key in example:
            digest.update(key.encode())
            _update_digest(digest, example[key])
    return digest.hexdigest()


def _vision_dtype(base: nn.Module) -> torch.dtype:
    tower = getattr(getattr(base, "model", base), "vision_tower", None)
    for parameter in (tower or base).parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


def _encoder_inputs(example: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    inputs = {}
    for key in IMAGE_INPUT_KEYS:
        value = example.get(key)
        if value is None:
            continue
        if isinstance(value, torch.Tensor):
            value = value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
        inputs[key] = value
    return inputs


def _group_by_image(examples: MutableSequence[dict[str, Any]]) -> tuple[dict[str, list[dict[str, Any]]], set[int]]:
    """Examples still holding pixels, by image key; and the ids of feature tensors already cached."""
    pending: dict[str, list[dict[str, Any]]] = {}
    already: set[int] = set()
    for example in examples:
        if FEATURES_KEY in example:
            already.add(id(example[FEATURES_KEY]))
            continue
        if example.get("pixel_values") is None:
            raise ValueError("precompute_image_features: an example has neither pixel_values nor cached features")
        if example["pixel_values"].shape[0] != 1:
            raise ValueError("precompute_image_features: expected one image per example (build_example output)")
        pending.setdefault(image_key(example), []).append(example)
    return pending, already


def precompute_image_features(
    model: nn.Module,
    examples: MutableSequence[dict[str, Any]],
    *,
    storage_device: str | torch.device = "cpu",
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> CacheStats:
    """Replace each example's image inputs by its vision features, computed once per unique image.

    ``model`` is the (PEFT-wrapped or bare) OCR-family model; ``examples`` are
    :func:`~deepsynth.data.collate.build_example` outputs (one image each), modified **in place**.
    Features are kept on ``storage_device`` (CPU by default: the DataLoader pins and moves them
    with the rest of the batch). Call :func:`cache_applicable` first: this function does not check
    that the vision path is frozen. Examples already cached are left as they are.

    ``max_bytes`` bounds the cache: when the first image's features times the number of unique
    images would exceed it, nothing is changed and ``stats.skipped`` says why (the run then
    encodes pages at every step, as without the cache). None = no bound.
    """
    base = _base_model(model)
    device = next(base.parameters()).device
    dtype = _vision_dtype(base)
    stats = CacheStats(examples=len(examples))
    started = time.perf_counter()
    pending, already = _group_by_image(examples)
    was_training = base.training
    base.eval()
    try:
        with torch.no_grad():
            for key, group in pending.items():
                output = base.get_image_features(**_encoder_inputs(group[0], device, dtype), return_dict=True)
                (features,) = output.pooler_output
                features = features.detach().to(storage_device)
                stats.encoder_calls += 1
                size = features.numel() * features.element_size()
                if stats.encoder_calls == 1 and max_bytes is not None and size * len(pending) > max_bytes:
                    stats.skipped = (f"{len(pending)} unique images x {size / 2**20:.2f} MiB of features would "
                                     f"exceed max_bytes={max_bytes / 2**30:.1f} GiB")
                    break
                stats.feature_bytes += size
                for example in group:
                    example[FEATURES_KEY] = features
                    for name in IMAGE_INPUT_KEYS:
                        example.pop(name, None)
    finally:
        base.train(was_training)
    stats.cached_examples = sum(1 for example in examples if FEATURES_KEY in example)
    stats.unique_images = len(pending) + len(already)
    stats.seconds = round(time.perf_counter() - started, 3)
    return stats


class CachedFeatureCollator:
    """Wrap a collator: batches of cached examples get ``mm_encoder_outputs`` instead of pixels.

    Text fields are padded by the wrapped collator exactly as before. A batch must be all cached
    or all uncached (uncached batches are passed through untouched).
    """

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        cached = [FEATURES_KEY in feature for feature in features]
        if not any(cached):
            return self.collator(features)
        if not all(cached):
            raise ValueError("CachedFeatureCollator: a batch mixes cached and uncached examples")
        rest = [{key: value for key, value in feature.items() if key != FEATURES_KEY} for feature in features]
        batch = self.collator(rest)
        batch["mm_encoder_outputs"] = {
            "image": CachedImageFeatures(pooler_output=[feature[FEATURES_KEY] for feature in features])
        }
        return batch
