"""The bundled transcription set: the French sample documents rendered to pages, each page's text as its target.

Built at load time from ``samples/french_documents.jsonl`` with the same renderer every text-only row
goes through (:func:`deepsynth.data.render.render_document`), so no image ships with the package.
The target is :func:`~deepsynth.data.render.visible_text`: exactly the words drawn on the page (a
document too long for one page is cut where the page is), paragraphs on their own lines. The train /
eval split is the sample set's own.
"""

from __future__ import annotations

import datasets

from deepsynth.data.loading import FEATURES, load_sample_dataset
from deepsynth.data.render import visible_text

__all__ = ["TRANSCRIPTION_SAMPLES", "load_transcription_samples"]

#: How the plan names the bundled transcription set.
TRANSCRIPTION_SAMPLES = "the bundled French pages to transcribe"


def load_transcription_samples(split: str = "train", max_samples: int | None = None) -> datasets.Dataset:
    """The bundled documents' pages (``"train"`` or ``"eval"``), ``summary`` = the page's text."""
    documents = load_sample_dataset(split, max_samples=max_samples)
    targets = [visible_text(text) for text in documents["text"]]
    # The pages stay those the loader rendered from the same texts (render_document's defaults).
    return documents.remove_columns("summary").add_column("summary", targets).select_columns(list(FEATURES))
