"""The size PDF pages are rendered at for a resolution mode: the one function training, planning and eval ask.

A mode's image-processor settings (:meth:`deepsynth.models.image_modes.ImageMode.processor_settings`)
give the size (:func:`deepsynth.data.pdf.page_size_for_settings`); the two layers meet here, above
both, so that neither imports the other.
"""

from __future__ import annotations

from deepsynth.data.pdf import DEFAULT_PAGE_SIZE, PageSize, page_size_for_settings
from deepsynth.models.image_modes import ImageMode, mode_for_model


def page_size_of(mode: ImageMode | None) -> PageSize:
    """The size pages are rendered at to be read in ``mode`` (None, a text model: the default size)."""
    return page_size_for_settings(None if mode is None else mode.processor_settings())


def page_size_for_model(model_name: str | None, image_mode: str | None) -> PageSize:
    """:func:`page_size_of` the mode ``image_mode`` (None: the model's own) of ``model_name``, before it loads.

    The default size for a model that cannot be resolved here (a hub name not cached while offline) or a
    mode its family lacks: the loader reports both.
    """
    try:
        _, mode = mode_for_model(model_name, image_mode)
    except (ValueError, OSError):
        return DEFAULT_PAGE_SIZE
    return page_size_of(mode)
