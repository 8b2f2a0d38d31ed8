"""Behaviour of text-to-page rendering that training on text-only documents relies on."""

from __future__ import annotations

import pytest
from PIL import Image, ImageChops, ImageOps

from deepsynth.data import render_document

FRENCH = "Été à Noël, ça coûte cher."
UNASSIGNED = "\u0378"  # not a character: every font draws its "missing glyph" box for it


def _ink_box(page: Image.Image) -> tuple[int, int, int, int] | None:
    """Bounding box of the non-white pixels."""
    return ImageOps.invert(page.convert("L")).getbbox()


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a, b).getbbox() is None


def test_default_page_is_square_white_rgb_with_black_text() -> None:
    page = render_document("Bonjour")
    assert page.mode == "RGB"
    assert page.size == (640, 640)
    assert page.getpixel((0, 0)) == (255, 255, 255)
    assert page.convert("L").getextrema()[0] < 50  # some near-black ink


def test_custom_size() -> None:
    assert render_document("x", width=300, height=500).size == (300, 500)
    assert render_document("x", width=300).size == (300, 300)


def test_rendering_is_deterministic() -> None:
    assert render_document(FRENCH).tobytes() == render_document(FRENCH).tobytes()


ACCENTED_PAIRS = [("é", "e"), ("à", "a"), ("ë", "e"), ("ç", "c"), ("û", "u"), ("É", "E")]


@pytest.mark.parametrize("accented, plain", ACCENTED_PAIRS)
def test_accented_letters_have_real_glyphs(accented: str, plain: str) -> None:
    page = render_document(accented)
    # Distinct from the unaccented letter and from the missing-glyph box.
    assert not _same(page, render_document(plain))
    assert not _same(page, render_document(UNASSIGNED))


def test_french_sentence_differs_from_boxes_in_place_of_accents() -> None:
    boxed = "".join(UNASSIGNED if ch in "Éàëçû" else ch for ch in FRENCH)
    assert not _same(render_document(FRENCH), render_document(boxed))


def test_short_french_text_is_entirely_drawn() -> None:
    text = (
        "Compte rendu du conseil d'école du 12 mars. Les élèves de CE2 iront au théâtre en avril ; "
        "la kermesse aura lieu le 28 juin. Prochaine réunion : jeudi à 18 h.\n\nLa directrice"
    )
    page = render_document(text)
    tall = render_document(text, height=2000)
    # Nothing was cut: the tall page holds no ink below the square page's area...
    box = _ink_box(tall)
    assert box is not None and box[3] <= 640 - 24
    # ...and the top of the tall page is pixel-identical to the square page.
    assert _same(page, tall.crop((0, 0, 640, 640)))


def test_text_stays_inside_margins_and_wraps() -> None:
    words = "mot " * 60 + "https://exemple.fr/" + "a" * 120  # includes a word longer than a line
    page = render_document(words, margin=24)
    left, top, right, bottom = _ink_box(page)
    assert left >= 24 and top >= 24
    assert right <= 640 - 24 + 1  # +1: anti-aliasing of the last glyph edge
    assert bottom - top > 100  # wrapped onto several lines


def test_long_text_is_cut_at_the_bottom_without_error() -> None:
    text = "Une phrase assez longue pour remplir la page. " * 200
    page = render_document(text)
    assert _ink_box(page)[3] <= 640 - 24
    # The same text on a taller page continues further down: the square page was cut.
    assert _ink_box(render_document(text, height=1500))[3] > 640


def test_blank_lines_between_paragraphs_are_kept() -> None:
    one_break = _ink_box(render_document("Premier\nSecond"))
    two_breaks = _ink_box(render_document("Premier\n\nSecond"))
    assert two_breaks[3] > one_break[3]  # the second paragraph starts a line lower
    assert _ink_box(render_document("\n\n\n")) is None


def test_empty_text_gives_blank_page() -> None:
    assert _ink_box(render_document("")) is None


def test_page_too_small_for_margins_is_rejected() -> None:
    with pytest.raises(ValueError, match="margins"):
        render_document("x", width=40, margin=24)
