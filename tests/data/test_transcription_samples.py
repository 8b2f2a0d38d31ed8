"""The bundled transcription set: each page is rendered from a sample document and its target is exactly what is drawn."""

from __future__ import annotations

from PIL import ImageChops

from deepsynth.data import load_sample_dataset, render_document
from deepsynth.data.render import visible_text
from deepsynth.data.splits import EVAL_SPLIT, load_splits
from deepsynth.data.transcription import load_transcription_samples


def _same(left, right) -> bool:
    return ImageChops.difference(left.convert("RGB"), right.convert("RGB")).getbbox() is None


def test_the_visible_text_of_a_page_redraws_the_same_page():
    paragraphs = "Objet : résiliation du bail.\n\nMadame, Monsieur,\n" + "Le pont de la Garenne ferme. " * 60
    page = render_document(paragraphs)
    seen = visible_text(paragraphs)
    assert _same(render_document(seen), page)  # nothing more and nothing less than what is drawn
    assert seen.startswith("Objet : résiliation du bail.\n\nMadame, Monsieur,\nLe pont de la Garenne ferme.")
    assert len(seen) < len(paragraphs)  # the long text is cut where the page ends
    assert " ".join(paragraphs.split()).startswith(" ".join(seen.split()))


def test_the_transcription_set_is_the_sample_documents_pages_and_their_text():
    pages = load_transcription_samples("eval", max_samples=3)
    documents = load_sample_dataset("eval", max_samples=3)
    assert pages.column_names == ["text", "summary", "image"] and len(pages) == 3
    for row, document in zip(pages, documents):
        assert row["summary"] == visible_text(document["text"])
        assert _same(row["image"], render_document(row["summary"]))
        assert row["summary"] != document["summary"]  # a transcription, not the summary
    assert len(load_transcription_samples("train")) == len(load_sample_dataset("train")) == 54


def test_the_bundled_data_of_the_transcribe_task():
    data = load_splits(None, max_train_samples=2, max_eval_samples=1, samples="transcribe")
    assert data.eval_from == EVAL_SPLIT and (len(data.train), len(data.eval)) == (2, 1)
    assert data.train[0]["summary"] == visible_text(data.train[0]["text"])
