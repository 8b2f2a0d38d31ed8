"""Resolution modes of the DeepSeek-OCR families: the views a page is cut into and the vision tokens they cost.

DeepSeek-OCR (v1) was trained in five modes, selected in its own code by ``base_size``,
``image_size`` and ``crop_mode`` (its ``config.py``): four single global views — Tiny 512 px,
Small 640, Base 1024, Large 1280 — and Gundam, a 1024 px global view plus 640 px tiles (2–6 of
them, only for pages larger than a tile). DeepSeek-OCR-2 reads a 1024 px global view plus 0–6 tiles
of 768 px by default ("dynamic resolution"). Each vision token covers ``patch × 4`` px a side (SAM
patches, then the neck's two stride-2 convolutions), 64 px at the real models' 16 px patches.

Modes are given here at that real scale and scaled to a model's own patch size, so the embedded tiny
DeepSeek-OCR-2 (8 px patches) reads the same token grids at half the pixels: its default, 384 px
with no tiles, is OCR-2's 768 px "small" view (the 144-query geometry it was pretrained on).

Token counts follow the native transformers classes: v1 (``UnlimitedOcr``) appends a learned newline
token to every row of a view's token grid (a row of tiles shares one newline per token row) and one
view separator; OCR-2 adds only the separator.

The setting is ``TrainerConfig.image_mode`` (None: the model's default mode); the processor is set
up for it by :func:`deepsynth.models.loading.load_model_and_processor`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from deepsynth.errors import ConfigError
from deepsynth.models.families import CAUSAL_LM, DEEPSEEK_OCR, DEEPSEEK_OCR2

__all__ = [
    "IMAGE_MODES",
    "ImageMode",
    "VisionTokens",
    "all_mode_names",
    "default_mode",
    "get_mode",
    "checkpoint_settings",
    "checkpoint_view_size",
    "mode_for_model",
    "mode_of_resolved",
    "model_geometry",
    "processor_settings_for_run",
    "vision_tokens_per_page",
]

# Name of the mode read from a checkpoint's own processor settings when they match no named mode.
CHECKPOINT_MODE = "checkpoint"
# Pixels per vision token side at the real models' geometry (16 px SAM patches × 4).
REFERENCE_CELL = 64


@dataclass(frozen=True)
class ImageMode:
    """One resolution mode: a global view of ``global_size`` px, plus tiles of ``tile_size`` px when set.

    Sizes are at the real models' scale (16 px patches) in the tables; :meth:`scaled` gives them for a
    model's own patch size. Tiles are cut only from pages larger than a tile, ``min_tiles`` to
    ``max_tiles`` of them in the grid closest to the page's aspect ratio (transformers' rule).
    """

    name: str
    global_size: int
    tile_size: int | None = None
    min_tiles: int = 0
    max_tiles: int = 0
    description: str = ""

    @property
    def tiled(self) -> bool:
        return self.tile_size is not None

    def scaled(self, cell: int) -> ImageMode:
        """This mode for a model whose vision token covers ``cell`` px a side (64 for the real models)."""
        if cell == REFERENCE_CELL:
            return self
        scale = cell / REFERENCE_CELL
        tile = None if self.tile_size is None else round(self.tile_size * scale)
        return replace(self, global_size=round(self.global_size * scale), tile_size=tile)

    def processor_settings(self) -> dict[str, Any]:
        """The image-processor attributes (and call keywords) that make transformers' processors read this mode.

        Without tiles, DeepSeek-OCR-2's processor resizes the global view to ``tile_size`` while it
        counts tokens from ``size``: both are the global size then.
        """
        return {
            "size": {"height": self.global_size, "width": self.global_size},
            "tile_size": self.tile_size or self.global_size,
            "crop_to_patches": self.tiled,
            "min_patches": self.min_tiles if self.tiled else 1,
            "max_patches": self.max_tiles if self.tiled else 1,
        }

    def views(self) -> str:
        """The views in words: ``one 1024-px view`` or the global view and its tiles."""
        if not self.tiled:
            return f"one {self.global_size}-px view"
        return (f"a {self.global_size}-px global view + {self.min_tiles}-{self.max_tiles} tiles of "
                f"{self.tile_size} px for pages larger than {self.tile_size} px")

    def describe(self) -> str:
        return f"{self.name}: {self.views()}"


def _v1_mode(name: str, size: int, description: str) -> ImageMode:
    return ImageMode(name, size, description=description)


#: Modes per family, at the real models' scale. DeepSeek-OCR's names are its own (README, config.py).
IMAGE_MODES: dict[str, dict[str, ImageMode]] = {
    DEEPSEEK_OCR: {
        "tiny": _v1_mode("tiny", 512, "64 vision tokens (+ row newlines and separator: 73)"),
        "small": _v1_mode("small", 640, "100 vision tokens (111)"),
        "base": _v1_mode("base", 1024, "256 vision tokens (273), the checkpoint's default"),
        "large": _v1_mode("large", 1280, "400 vision tokens (421)"),
        # DeepSeek-OCR's config.py: MIN_CROPS 2, MAX_CROPS 6 ("max 9").
        "gundam": ImageMode("gundam", 1024, 640, 2, 6, "273 + 100 per tile (+10 newlines per row of tiles)"),
    },
    DEEPSEEK_OCR2: {
        # DeepSeek-OCR-2's default: 1024 global (256 tokens) + (0-6) x 768 tiles (144 each).
        "dynamic": ImageMode("dynamic", 1024, 768, 2, 6, "257 + 144 per tile, DeepSeek-OCR-2's default"),
        "base": ImageMode("base", 1024, description="257 vision tokens: the global view alone"),
        "small": ImageMode("small", 768, description="145 vision tokens: one view at the tile geometry"),
    },
}


def all_mode_names() -> tuple[str, ...]:
    """Every mode name of every family (what a config may hold before its model is known)."""
    return tuple(dict.fromkeys(name for modes in IMAGE_MODES.values() for name in modes))


def model_geometry(config: Any) -> tuple[int, int]:
    """(SAM patch size, downsampling) of an OCR-family transformers config: pixels per token side = product."""
    sam = config.vision_config.sam_config
    # The SAM neck halves the grid once per downsample convolution (two of them in every checkpoint).
    downsample = 2 ** len(getattr(sam, "downsample_channels", None) or (0, 0))
    return int(sam.patch_size), downsample


def _cell(config: Any) -> int:
    if config is None:
        return REFERENCE_CELL
    patch, downsample = model_geometry(config)
    return patch * downsample


def default_mode(family: str, *, embedded: bool = False) -> str | None:
    """The family's default mode, for a model whose own processor settings name none (None for a text model).

    DeepSeek-OCR: ``base`` (its processor_config.json: one 1024 px view). DeepSeek-OCR-2: ``dynamic``
    (its processor's default). The embedded tiny model: ``small``, what it was pretrained on.
    """
    if family == CAUSAL_LM:
        return None
    if family == DEEPSEEK_OCR2:
        return "small" if embedded else "dynamic"
    return "base"


def get_mode(family: str, name: str | None, config: Any = None, *, embedded: bool = False,
             checkpoint: dict | None = None) -> ImageMode | None:
    """The mode ``name`` of ``family``, scaled to the model ``config`` (None: the real models' geometry).

    ``name`` None is the model's own mode: the one its processor settings (``checkpoint``: a local
    checkpoint's processor_config.json) describe, else :func:`default_mode`.

    Raises:
        ConfigError: naming ``image_mode`` and the family's modes when ``name`` is not one of them, or
            when a mode is asked of a text model.
    """
    if family == CAUSAL_LM:
        if name is not None:
            raise ConfigError("image_mode", name, "null for a text causal LM (it reads text, not page images)")
        return None
    modes = IMAGE_MODES[family]
    if name is None:
        own = checkpoint_mode(family, checkpoint or {}, config)
        if own is not None:
            return own
    chosen = name if name is not None else default_mode(family, embedded=embedded)
    if chosen not in modes:
        raise ConfigError("image_mode", name, f"one of {', '.join(modes)} for {_family_label(family)}")
    return modes[chosen].scaled(_cell(config))


def checkpoint_mode(family: str, settings: dict, config: Any = None) -> ImageMode | None:
    """The mode a checkpoint's processor settings describe: a named one when they match it, else the settings
    as they are (named ``checkpoint``); None when they name no view size.

    Reads DeepSeek-OCR's own ``candidate_resolutions`` and what transformers saves (``image_processor``:
    ``size``, ``tile_size``, ``crop_to_patches``, ``min_patches``, ``max_patches``).
    """
    size = checkpoint_view_size(settings)
    if size is None:
        return None
    image = settings.get("image_processor") or {}
    tiled = bool(image.get("crop_to_patches", False))
    tile = int(image["tile_size"]) if tiled and image.get("tile_size") else None
    if not tiled and family == DEEPSEEK_OCR2 and image.get("tile_size"):
        size = int(image["tile_size"])  # OCR-2's processor resizes a view without tiles to tile_size
    for mode in IMAGE_MODES[family].values():
        scaled = mode.scaled(_cell(config))
        if (scaled.global_size, scaled.tile_size) == (size, tile):
            return scaled
    limits = (int(image.get("min_patches", 2)), int(image.get("max_patches", 6))) if tile else (0, 0)
    return ImageMode(CHECKPOINT_MODE, size, tile, *limits, description="the checkpoint's processor settings")


def _family_label(family: str) -> str:
    return {DEEPSEEK_OCR: "DeepSeek-OCR (v1)", DEEPSEEK_OCR2: "DeepSeek-OCR-2"}.get(family, family)


def mode_of_resolved(resolved: Any, name: str | None) -> ImageMode | None:
    """The mode ``name`` (None: the model's own) of a resolved model (a ``resolver.ResolvedConfig``), scaled to
    its geometry; None for a text model. Raises ConfigError for a mode its family lacks."""
    from deepsynth.models.tiny import EMBEDDED_MODEL_NAME

    if resolved.family == CAUSAL_LM:
        return get_mode(CAUSAL_LM, name)
    return get_mode(resolved.family, name, resolved.config, embedded=resolved.name == EMBEDDED_MODEL_NAME,
                    checkpoint=checkpoint_settings(resolved))


def mode_for_model(model_name: str | None, name: str | None) -> tuple[Any, ImageMode | None]:
    """(resolved model, mode) for a model name as the loader resolves it; no weights are read.

    Raises ValueError when the name cannot be resolved, ConfigError for a mode its family lacks.
    """
    from deepsynth.models.resolver import resolve_config

    resolved = resolve_config(model_name)
    return resolved, mode_of_resolved(resolved, name)


def processor_settings_for_run(model_name: str | None, name: str | None) -> dict[str, Any] | None:
    """The image-processor settings ``model_name`` read in mode ``name`` (None: the model's own) sets up,
    for :func:`deepsynth.data.pdf.page_size_for_settings` to size PDF pages before the model loads. No
    weights are read. None (the loader's default page size) for a model that cannot be resolved here (a
    hub name not cached while offline), a mode its family lacks (the loader reports both) or a text model.
    """
    try:
        _, mode = mode_for_model(model_name, name)
    except (ValueError, OSError):
        return None
    return None if mode is None else mode.processor_settings()


def checkpoint_settings(resolved: Any) -> dict:
    """A local checkpoint directory's processor_config.json ({} for hub names, text models, unreadable files)."""
    import json
    from pathlib import Path

    if resolved.family == CAUSAL_LM or resolved.local_dir is None:
        return {}
    try:
        settings = json.loads((Path(resolved.local_dir) / "processor_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


def checkpoint_view_size(settings: dict) -> int | None:
    """The global view size of processor settings: DeepSeek-OCR's ``candidate_resolutions`` or
    ``image_processor.size`` (a processor saved by transformers); None when neither is there."""
    resolutions = settings.get("candidate_resolutions")
    if resolutions:
        return int(max(resolutions[0]))
    size = (settings.get("image_processor") or {}).get("size")
    if isinstance(size, dict) and size:
        return int(max(size.get("height", 0), size.get("width", 0)))
    return None


@dataclass(frozen=True)
class VisionTokens:
    """Vision tokens a page costs in one mode (image placeholders in the prompt, what the model consumes).

    ``global_tokens``: the global view with its row newlines and the view separator. A page cut into a
    grid of ``columns × rows`` tiles adds ``tile_tokens`` per tile and ``tile_row_tokens`` per row of tiles.
    """

    family: str
    mode: ImageMode
    global_tokens: int
    tile_tokens: int = 0
    tile_row_tokens: int = 0

    def for_grid(self, columns: int, rows: int) -> int:
        return self.global_tokens + columns * rows * self.tile_tokens + rows * self.tile_row_tokens

    @property
    def most(self) -> int:
        """The most a page can cost in this mode (the largest tile grid)."""
        if not self.mode.tiled:
            return self.global_tokens
        grids = [(c, r) for c in range(1, self.mode.max_tiles + 1) for r in range(1, self.mode.max_tiles + 1)
                 if self.mode.min_tiles <= c * r <= self.mode.max_tiles]
        return max(self.for_grid(c, r) for c, r in grids)

    def text(self) -> str:
        """One line: ``273 per page (base: one 1024-px view)`` or the tile arithmetic."""
        if not self.mode.tiled:
            return f"{self.global_tokens} per page ({self.mode.describe()})"
        rows = f" + {self.tile_row_tokens} per row of tiles" if self.tile_row_tokens else ""
        return (f"{self.global_tokens} per page + {self.tile_tokens} per tile{rows}, at most {self.most} "
                f"({self.mode.describe()})")

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode.name, "global_size": self.mode.global_size, "tile_size": self.mode.tile_size,
                "min_tiles": self.mode.min_tiles, "max_tiles": self.mode.max_tiles,
                "global_tokens": self.global_tokens, "tile_tokens": self.tile_tokens,
                "tile_row_tokens": self.tile_row_tokens, "most": self.most, "text": self.text()}


def vision_tokens_per_page(family: str, mode: str | ImageMode | None, config: Any = None) -> VisionTokens | None:
    """Vision tokens per page of ``family`` in ``mode`` (a name, None for the default, or an ImageMode
    already scaled) for the model ``config`` (None: the real models' geometry). None for a text model."""
    if family == CAUSAL_LM:
        return None
    if not isinstance(mode, ImageMode):
        mode = get_mode(family, mode, config)
    cell = _cell(config)
    side = -(-mode.global_size // cell)
    tile_side = -(-mode.tile_size // cell) if mode.tiled else 0
    if family == DEEPSEEK_OCR:  # a newline after every token row, then the view separator
        return VisionTokens(family, mode, side * (side + 1) + 1, tile_side * tile_side, tile_side)
    return VisionTokens(family, mode, side * side + 1, tile_side * tile_side, 0)
