"""Render plain text onto a page image, so text-only documents can feed a vision model.

DeepSeek-OCR-family models read documents as images. When a user only has text,
we draw it on a white page the way a simple printed document looks.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import matplotlib
from PIL import Image, ImageDraw, ImageFont

__all__ = ["render_document", "visible_text", "FONT_PATH"]

# Pillow's built-in bitmap font has no accented glyphs (é, à, ç would come out as
# boxes), and system fonts differ between machines. matplotlib ships DejaVu Sans,
# which covers Latin-1/Latin Extended, so pages render the same everywhere.
FONT_PATH = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"

_LINE_SPACING = 1.3  # line height as a multiple of the font size; close to print defaults


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    # Loading a TrueType face costs a few milliseconds; datasets render many pages.
    return ImageFont.truetype(str(FONT_PATH), size=size)


def _fits(text: str, font: ImageFont.FreeTypeFont, max_width: float) -> bool:
    # Glyphs are at least half a pixel wide (all but zero-width ones), so a longer string never
    # fits; not measuring it keeps a hostile 1 MB "word" cheap (Pillow refuses 1M characters).
    return len(text) <= 2 * max_width and font.getlength(text) <= max_width


def _split_long_word(word: str, font: ImageFont.FreeTypeFont, max_width: float) -> Iterator[str]:
    """Cut a word wider than the line (a URL, a long number) into pieces that fit."""
    current = ""
    for char in word:
        if current and not _fits(current + char, font, max_width):
            yield current
            current = char
        else:
            current += char
    if current:
        yield current


def _wrap_paragraph(paragraph: str, font: ImageFont.FreeTypeFont, max_width: float) -> Iterator[str]:
    """Greedy word wrap of one paragraph, measured with the real font."""
    words = paragraph.split()
    if not words:
        yield ""  # an empty paragraph still takes one blank line
        return
    current = ""
    for word in words:
        candidate = f"{current} {word}" if current else word
        if _fits(candidate, font, max_width):
            current = candidate
            continue
        if current:
            yield current
        if _fits(word, font, max_width):
            current = word
        else:
            current = ""
            for piece in _split_long_word(word, font, max_width):
                if current:
                    yield current
                current = piece
    yield current


def render_document(
    text: str,
    *,
    width: int = 640,
    height: int | None = None,
    font_size: int = 20,
    margin: int = 24,
) -> Image.Image:
    """Draw `text` as black words on a white RGB page.

    Words are wrapped to fit between the margins (measured with the font, so
    proportional glyphs wrap correctly); newlines start a new line and blank
    lines are kept. `height` defaults to `width` (a square page, the input shape
    these models expect). Text that does not fit is cut at the bottom margin
    without error: the model sees the beginning of a long document.

    The result is deterministic for a given text and Pillow version.
    """
    if height is None:
        height = width
    if width <= 2 * margin or height <= 2 * margin:
        raise ValueError(f"page {width}x{height} leaves no room inside margins of {margin}px")
    if font_size <= 0:
        raise ValueError(f"font_size must be positive, got {font_size}")

    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    font = _font(font_size)
    for y, line, _ in _page_lines(text, width=width, height=height, font_size=font_size, margin=margin):
        if line:
            draw.text((margin, y), line, font=font, fill="black")
    return page


def _page_lines(text: str, *, width: int, height: int, font_size: int, margin: int) -> Iterator[tuple[int, str, int]]:
    """(y, line, paragraph number) of every line that fits on the page, top to bottom.

    Lazy, so a page stops measuring text once it is full: a 1 MB text costs as much as one page.
    """
    font = _font(font_size)
    line_height = round(font_size * _LINE_SPACING)
    ascent, descent = font.getmetrics()
    y = margin
    max_width = width - 2 * margin
    normalized = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    for number, paragraph in enumerate(normalized.split("\n")):
        for line in _wrap_paragraph(paragraph, font, max_width):
            # Stop before a line whose glyphs would cross the bottom margin: a
            # half-drawn line is worse for OCR than a cleanly missing one.
            if y + ascent + descent > height - margin:
                return
            yield y, line, number
            y += line_height


def visible_text(text: str, *, width: int = 640, height: int | None = None, font_size: int = 20,
                 margin: int = 24) -> str:
    """The part of ``text`` that :func:`render_document` draws with the same arguments: its transcription.

    Lines of one paragraph are joined with a space, paragraphs with a newline (blank lines kept), and
    a text cut at the bottom of the page ends with its last drawn line.
    """
    paragraphs: dict[int, list[str]] = {}
    for _, line, number in _page_lines(text, width=width, height=height or width, font_size=font_size, margin=margin):
        paragraphs.setdefault(number, []).append(line)
    return "\n".join(" ".join(part for part in lines if part) for lines in paragraphs.values())
