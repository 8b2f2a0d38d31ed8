"""Processors of the OCR families: DeepSeek-OCR v1's built from its checkpoint settings; a mode applied to any."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase, UnlimitedOcrProcessor
from transformers.image_utils import SizeDict, get_image_size
from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import (
    DeepseekOcr2ImageProcessorPil,
    get_optimal_tiled_canvas,
)

from deepsynth.models.families import DEEPSEEK_OCR
from deepsynth.models.image_modes import ImageMode, get_mode

__all__ = ["UnlimitedOcrPilImageProcessor", "apply_image_mode", "build_deepseek_ocr_processor"]

# DeepSeek-OCR v1 processing defaults (shared/reference/deepseek-ocr/processor_config.json); the views
# come from the mode (deepsynth.models.image_modes: Base, 1024 px, unless the checkpoint says otherwise).
_V1_DEFAULTS = {"patch_size": 16, "downsample_ratio": 4, "mean": [0.5] * 3, "std": [0.5] * 3}


class UnlimitedOcrPilImageProcessor(DeepseekOcr2ImageProcessorPil):
    """DeepSeek-OCR v1's views (every mode, Gundam tiles included), with Pillow instead of torchvision.

    transformers' ``UnlimitedOcrImageProcessor`` only has a torchvision backend, and torchvision is
    not a dependency of DeepSynth (its PyPI wheels are CUDA builds that do not import against the
    CPU torch). DeepSeek-OCR-2's Pillow processor performs the same operations — the global view,
    and tiles cut from the grid closest to the page's aspect ratio (the same transformers function) —
    so this reuses it and adds what ``UnlimitedOcrProcessor`` reads: ``patches_grid`` (columns, rows
    of tiles; 1×1 without tiles) and ``num_local_patches`` as a list. As upstream, a view of at most
    ``maximum_pad_value`` px with no tiles is resized to a square directly; larger ones keep their
    aspect ratio and are padded.
    """

    model_input_names = ["pixel_values", "num_local_patches", "patches_grid"]
    maximum_pad_value = 640

    def _preprocess(self, images, size: SizeDict, resample, *args, **kwargs):  # type: ignore[override]
        target = max(size.height, size.width)
        crop = bool(kwargs.get("crop_to_patches", self.crop_to_patches))
        tile_size = int(kwargs.get("tile_size") or self.tile_size)
        if not crop:
            if target <= self.maximum_pad_value:
                images = [self.resize(image, SizeDict(height=target, width=target), resample=resample)
                          for image in images]
            kwargs["tile_size"] = target  # without tiles, the parent resizes the global view to tile_size
        grids = [self._grid(image, crop, tile_size, kwargs) for image in images]
        outputs = super()._preprocess(images, size, resample, *args, **kwargs)
        outputs["patches_grid"] = grids
        outputs["num_local_patches"] = [int(n) for n in outputs["num_local_patches"]]
        return outputs

    def _grid(self, image, crop: bool, tile_size: int, kwargs: dict) -> list[int]:
        height, width = get_image_size(image)
        if not crop or max(height, width) <= tile_size:
            return [1, 1]
        columns, rows = get_optimal_tiled_canvas(
            (height, width), (tile_size, tile_size), int(kwargs.get("min_patches") or self.min_patches),
            int(kwargs.get("max_patches") or self.max_patches))
        return [columns, rows]


def apply_image_mode(processor: Any, mode: ImageMode) -> Any:
    """Set ``processor``'s image processor to read pages in ``mode`` (sizes already scaled to the model)."""
    image_processor = processor.image_processor
    for key, value in mode.processor_settings().items():
        setattr(image_processor, key, SizeDict(**value) if key == "size" else value)
    return processor


def build_deepseek_ocr_processor(
    tokenizer: PreTrainedTokenizerBase, processor_config: dict | None = None, mode: ImageMode | None = None
) -> UnlimitedOcrProcessor:
    """transformers' ``UnlimitedOcrProcessor`` set up from DeepSeek-OCR's ``processor_config.json``.

    ``mode`` (a DeepSeek-OCR mode of :mod:`deepsynth.models.image_modes`) sets the views; None reads
    the checkpoint's own: ``candidate_resolutions``, or ``image_processor.size`` in a config saved by
    transformers (Base mode, 1024 px, 273 vision tokens, when neither is there). ``patch_size``,
    ``downsample_ratio`` and the normalisation come from the settings.
    """
    settings = processor_config or {}
    # transformers' own UnlimitedOcrProcessor saves the image settings nested under "image_processor".
    nested = settings.get("image_processor") or {}
    if mode is None:
        mode = get_mode(DEEPSEEK_OCR, None, checkpoint=settings)
    image_processor = UnlimitedOcrPilImageProcessor(
        **mode.processor_settings(),
        image_mean=settings.get("image_mean", nested.get("image_mean", _V1_DEFAULTS["mean"])),
        image_std=settings.get("image_std", nested.get("image_std", _V1_DEFAULTS["std"])),
    )
    return UnlimitedOcrProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=int(settings.get("patch_size", _V1_DEFAULTS["patch_size"])),
        downsample_ratio=int(settings.get("downsample_ratio", _V1_DEFAULTS["downsample_ratio"])),
    )

