"""PDF pages as page images: opened and rasterised with PDFium (pypdfium2) at the size the model reads.

Why pypdfium2: PDFium is the PDF engine of Chromium, maintained by Google; the bindings are
maintained, Apache-2.0/BSD-3 licensed, ship wheels with PDFium inside (no system package such as
poppler or ghostscript), render any page at any scale, and read pages lazily, so one page of a long
PDF costs that page only.

A page is rendered so that its longer side is ``target_size`` pixels, the size of the view the
model's processor makes of it (not at a fixed DPI: a 72-dpi render of an A4 page is 842 px high,
a 300-dpi one 3,508 px, and the processor would resize either). :func:`page_size_for` reads that
size from a loaded processor, :func:`page_size_for_settings` from a resolution mode's settings (what
training, planning and evaluation use, through
:func:`deepsynth.models.image_modes.processor_settings_for_run`, before the model loads); without either,
:data:`DEFAULT_PAGE_SIZE` (1024 px: the global view of DeepSeek-OCR's Base mode and of
DeepSeek-OCR-2) is used.

Problems (not a PDF, damaged or truncated, password-protected, a page that does not exist, a
multi-page PDF where one page was meant) are raised as :class:`ImageProblem` naming the file and
the page; the loader adds the data file, row and column.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .images import MAX_IMAGE_PIXELS, ImageProblem, UnnamedPage, png_bytes

__all__ = ["DEFAULT_PAGE_SIZE", "PageSize", "page_count", "page_size_for", "page_size_for_settings", "parse_reference",
           "render_page"]

#: Longer side of a rendered page, in pixels, when the model's processor does not say.
DEFAULT_PAGE_SIZE = 1024
# A page is rendered with its longer side at most this long, so it never reaches MAX_IMAGE_PIXELS.
_MAX_PAGE_SIZE = int(MAX_IMAGE_PIXELS**0.5)

#: A longer side in pixels, or a function of the page's (width, height) in PDF points giving it.
PageSize = int | Callable[[float, float], int]

# PDFium is not thread-safe (pypdfium2's documentation): the web app validates uploads in threads.
_PDFIUM_LOCK = threading.Lock()
_REFERENCE = re.compile(r"^(?P<path>.*\.pdf)#(?P<fragment>.*)$", re.IGNORECASE | re.DOTALL)
_PAGE_FRAGMENT = re.compile(r"^page=(?P<page>[0-9]{1,9})$")
# PDFium's error codes (fpdfview.h) that have a message of their own.
_FPDF_ERR_FORMAT, _FPDF_ERR_PASSWORD, _FPDF_ERR_SECURITY = 3, 4, 6


def parse_reference(text: str) -> tuple[str, int | None] | None:
    """``("a.pdf", 3)`` for ``"a.pdf#page=3"``, ``("a.pdf", None)`` for ``"a.pdf"``; None if ``text`` names no PDF.

    The fragment is the PDF open parameter of RFC 8118 (``#page=N``, pages numbered from 1).
    """
    match = _REFERENCE.match(text)
    if match is None:
        return (text, None) if text.lower().endswith(".pdf") else None
    page = _PAGE_FRAGMENT.match(match.group("fragment"))
    if page is None:
        raise ImageProblem(f"{_quoted(text)}: expected 'FILE.pdf#page=N' with N a page number from 1, "
                           f"got '#{match.group('fragment')[:40]}'")
    return match.group("path"), int(page.group("page"))


def page_count(data: bytes, described: str) -> int:
    """Pages of the PDF in ``data`` (``described`` names it in messages)."""
    with _PDFIUM_LOCK:
        document = _open(data, described, None)
        try:
            return len(document)
        finally:
            document.close()


def render_page(data: bytes, page: int | None, *, described: str, target_size: PageSize = DEFAULT_PAGE_SIZE,
                path: str | None = None) -> bytes:
    """PNG bytes of page ``page`` (1-based) of the PDF in ``data``, its longer side ``target_size`` px.

    ``page`` None means "the PDF's only page": a PDF of several pages is refused (:class:`UnnamedPage`,
    carrying ``path``), because one row is one page (one image) with its own target; the message says
    how to name the page.
    """
    with _PDFIUM_LOCK:
        document = _open(data, described, page)
        try:
            count = len(document)
            number = _check_page(page, count, described, path)
            document.init_forms()  # so that filled-in form fields are drawn
            pdf_page = document[number - 1]
            width, height = pdf_page.get_size()
            if not (width > 0 and height > 0):
                raise ImageProblem(f"{described}, page {number}: the page has no size ({width:g}×{height:g} points)")
            size = _target(target_size, width, height)
            image = pdf_page.render(scale=size / max(width, height), may_draw_forms=True).to_pil()
            image = image.convert("RGB")  # a copy: the bitmap's memory goes with the document
        except (ImageProblem, _TargetSizeError):
            raise
        except Exception as exc:  # pdfium.PdfiumError, or what a damaged page makes PDFium return
            raise ImageProblem(f"{described}, page {page or 1}: cannot be rendered ({_cut(exc)})") from None
        finally:
            document.close()
    return png_bytes(image)


def _open(data: bytes, described: str, page: int | None) -> Any:
    import pypdfium2 as pdfium

    where = f"{described}" if page is None else f"{described} (page {page})"
    if b"%PDF-" not in data[:1024]:  # PDFium would say "data format error" for a PNG named .pdf too
        raise ImageProblem(f"{where} is not a PDF (a PDF starts with '%PDF-')")
    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        code, text = getattr(exc, "err_code", None), str(exc).lower()  # the text too: older pypdfium2 had no err_code
        if code == _FPDF_ERR_PASSWORD or "password" in text:
            raise ImageProblem(f"{where} is password-protected; save a copy without the password (for example "
                               "'qpdf --decrypt --password=… in.pdf out.pdf') and use that") from None
        if code == _FPDF_ERR_SECURITY or "security error" in text:
            raise ImageProblem(f"{where} is encrypted with a security handler PDFium does not support; save a "
                               "copy without encryption and use that") from None
        if code == _FPDF_ERR_FORMAT or "data format error" in text:
            raise ImageProblem(f"{where} is damaged or truncated (PDFium: data format error); export or download "
                               "it again") from None
        raise ImageProblem(f"{where} cannot be opened ({_cut(exc)})") from None


def _check_page(page: int | None, count: int, described: str, path: str | None = None) -> int:
    if count < 1:
        raise ImageProblem(f"{described} has no pages")
    if page is None:
        if count == 1:
            return 1
        raise UnnamedPage(
            f"{described} has {count} pages and the row does not say which one; one row is one page with its own "
            f"target: give a 'page' column (1 to {count}) or write 'FILE.pdf#page=N', one row per page (DeepSynth "
            "trains on one page image per sample)", count, path)
    if not 1 <= page <= count:
        pages = "1 page" if count == 1 else f"{count} pages"
        raise ImageProblem(f"{described}, page {page}: no such page (the PDF has {pages})")
    return page


class _TargetSizeError(ValueError):
    """A caller's bad ``target_size``: a programming error, not a problem of the user's PDF."""


def _target(target_size: PageSize, width: float, height: float) -> int:
    size = target_size(width, height) if callable(target_size) else target_size
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= _MAX_PAGE_SIZE:
        raise _TargetSizeError(f"target_size: got {size!r}, expected a whole number of pixels from 16 to "
                               f"{_MAX_PAGE_SIZE}")
    return size


def page_size_for(processor: Any) -> PageSize:
    """The longer side, in pixels, a page should have for ``processor``'s view of it.

    Without tiles it is the processor's global view (DeepSeek-OCR Base: 1024, the embedded model:
    384). With tiles (``crop_to_patches``), the page must also cover the tile grid the processor
    picks for its aspect ratio (DeepSeek-OCR-2: up to 6 tiles of 768 px, e.g. 2×3 tiles = 2,304 px
    for an A4 page), so the answer is a function of the page's size, using transformers' own grid
    choice. A processor that says neither gets :data:`DEFAULT_PAGE_SIZE`.
    """
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return DEFAULT_PAGE_SIZE
    names = ("size", "tile_size", "crop_to_patches", "min_patches", "max_patches")
    return page_size_for_settings({name: getattr(image_processor, name, None) for name in names})


def page_size_for_settings(settings: Mapping[str, Any] | None) -> PageSize:
    """:func:`page_size_for` from image-processor settings (``size``, ``tile_size``, ``crop_to_patches``,
    ``min_patches``, ``max_patches``): what a resolution mode sets (``ImageMode.processor_settings``,
    :func:`deepsynth.models.image_modes.processor_settings_for_run`), so pages can be rendered for a
    run's mode before its model is loaded. None: :data:`DEFAULT_PAGE_SIZE`."""
    if settings is None:
        return DEFAULT_PAGE_SIZE
    size = settings.get("size")
    view = max(_dimension(size, "height"), _dimension(size, "width"))
    tile = settings.get("tile_size")
    if not settings.get("crop_to_patches") or not isinstance(tile, int):
        # DeepseekOcr2's processor resizes the global view to tile_size when it makes no tiles.
        return min(tile if isinstance(tile, int) else view or DEFAULT_PAGE_SIZE, _MAX_PAGE_SIZE)
    lowest = int(settings.get("min_patches") or 1)
    highest = int(settings.get("max_patches") or 1)

    def covering(width: float, height: float) -> int:
        from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import get_optimal_tiled_canvas

        columns, rows = get_optimal_tiled_canvas((round(height), round(width)), (tile, tile), lowest, highest)
        return min(max(view, tile * max(columns, rows)), _MAX_PAGE_SIZE)

    return covering


def _dimension(size: Any, name: str) -> int:
    value = size.get(name) if isinstance(size, dict) else getattr(size, name, None)
    return int(value) if isinstance(value, int) else 0


def _quoted(text: str) -> str:
    return repr(text if len(text) <= 80 else f"{text[:79]}…")


def _cut(error: BaseException, limit: int = 160) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else f"{text[: limit - 1]}…"
