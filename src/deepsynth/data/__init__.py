"""Loading users' documents (and the bundled French samples) as canonical datasets.

Every loader returns a ``datasets.Dataset`` with ``text``, ``summary`` and
``image`` (RGB PIL) columns; see :func:`load_documents`.
"""

from .loading import SAMPLE_DATA_PATH, DataError, load_documents, load_sample_dataset
from .render import render_document

__all__ = ["DataError", "load_documents", "load_sample_dataset", "SAMPLE_DATA_PATH", "render_document"]
