"""Fixtures for model tests: a private cache, a rendered page, a tiny DeepSeek-OCR v1 checkpoint."""

from __future__ import annotations

import pytest
from tiny_deepseek_ocr import write_deepseek_ocr_checkpoint

from deepsynth.data.render import render_document
from deepsynth.models import tiny

PAGE_TEXT = (
    "Compte rendu du conseil municipal\n"
    "Le conseil a voté le budget annuel. Les dépenses augmentent de 3 % ; "
    "l'école Jean-Moulin sera rénovée cet été, à Noël les travaux seront finis."
)


@pytest.fixture(autouse=True, scope="session")
def _private_deepsynth_cache(tmp_path_factory):
    """Keep the embedded model's cache out of the user's home directory."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEEPSYNTH_CACHE", str(tmp_path_factory.mktemp("deepsynth-cache")))
        yield


@pytest.fixture(scope="session")
def page_image():
    return render_document(PAGE_TEXT, width=tiny.IMAGE_SIZE, font_size=14, margin=16)


@pytest.fixture()
def embedded():
    """A fresh (model, processor) pair of the embedded model, read from the session cache."""
    return tiny.load_embedded()


@pytest.fixture(scope="session")
def deepseek_ocr_checkpoint(tmp_path_factory):
    """(directory, native model) of a tiny DeepSeek-OCR v1 checkpoint in the real naming."""
    directory = tmp_path_factory.mktemp("deepseek-ocr-tiny")
    native = write_deepseek_ocr_checkpoint(directory)
    return directory, native
