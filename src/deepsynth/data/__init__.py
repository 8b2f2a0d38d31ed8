"""Loading users' documents (and the bundled French samples) as canonical datasets.

Every loader returns a ``datasets.Dataset`` with ``text``, ``summary`` and
``image`` (RGB PIL) columns; see :func:`load_documents`.
"""

from .images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from .loading import SAMPLE_DATA_PATH, DocumentCounts, check_documents, load_documents, load_sample_dataset
from .table import MAX_LINE_BYTES, MAX_ROWS, MAX_TEXT_BYTES, DataError
from .render import render_document

__all__ = [
    "DataError",
    "DocumentCounts",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_LINE_BYTES",
    "MAX_ROWS",
    "MAX_TEXT_BYTES",
    "SAMPLE_DATA_PATH",
    "check_documents",
    "load_documents",
    "load_sample_dataset",
    "render_document",
]
