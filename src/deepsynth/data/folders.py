"""Folders of page images and PDFs: their targets file, their pages, and the page one data row names.

A folder given as data holds page images and/or PDFs and one targets file beside them (CSV, TSV,
JSON lines, JSON or Parquet) mapping each page to its target:

- ``file``: the image or PDF, relative to the targets file (or ``image``, as in any data file);
- ``page``: the page of a PDF, from 1; may be left empty for a one-page PDF (or written in the
  reference itself: ``image`` = ``report.pdf#page=2``);
- ``summary``: the target (a summary, or the page's text for transcription);
- optionally ``text`` and ``split``, as in any data file.

One row is one page with its own target. A PDF of several pages named without a page is refused
(a summary of the whole document is not the target of each page, and one sample holds one page
image in DeepSynth's pipeline, whatever the processor could take).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from . import pdf
from .images import TIFF_SUFFIXES, ImageProblem, image_bytes, image_page_count, read_file, tiff_reference

__all__ = ["FILE_COLUMN", "IMAGE_SUFFIXES", "PAGE_COLUMN", "Page", "PageProblem", "data_files", "is_saved_dataset",
           "list_pages", "missing_targets_problem", "page_files", "read_page", "row_page"]

FILE_COLUMN = "file"
PAGE_COLUMN = "page"
#: Page images a folder may hold (what Pillow reads for the loader), besides PDFs.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")
_PAGE_SUFFIXES = (*IMAGE_SUFFIXES, ".pdf")
_SAVED_DATASET_FILES = ("dataset_dict.json", "dataset_info.json", "state.json")  # what save_to_disk writes


class PageProblem(ImageProblem):
    """What is wrong with the page a row names, and the column that names it."""

    def __init__(self, message: str, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column


# ---------------------------------------------------------------------------
# A folder given as data


def is_saved_dataset(folder: Path) -> bool:
    """True for a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return any((folder / name).is_file() for name in _SAVED_DATASET_FILES)


def _natural(name: str) -> list[Any]:
    # page2.png before page10.png, as a file manager shows them
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name)]


def _visible_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    found = [path for path in folder.iterdir()
             if path.suffix.lower() in suffixes and not path.name.startswith(".") and path.is_file()]
    return sorted(found, key=lambda path: _natural(path.name))


def data_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The data files (targets files) directly in ``folder``."""
    return _visible_files(folder, suffixes)


def page_files(folder: Path) -> list[Path]:
    """The page images and PDFs directly in ``folder``, in natural order."""
    return _visible_files(folder, _PAGE_SUFFIXES)


def missing_targets_problem(folder: Path, found: list[Path], suffixes: tuple[str, ...]) -> str:
    """Why a folder that is not a saved dataset cannot be read as data, and what to do."""
    kinds = ", ".join(suffixes)
    if len(found) > 1:
        names = ", ".join(path.name for path in found[:10])
        return (f"holds several data files ({names}); keep exactly one targets file beside the pages, or pass "
                "the one to use as --data")
    pages = page_files(folder)
    shown = ", ".join(path.name for path in pages[:5]) + (", …" if len(pages) > 5 else "")
    held = f"holds {len(pages)} page file(s) ({shown}) but" if pages else "holds no page images or PDFs and"
    return (f"{held} no targets file; put one targets file ({kinds}) beside the pages with the columns "
            f"'{FILE_COLUMN}', '{PAGE_COLUMN}' (for PDFs) and 'summary', or draft one with "
            f"'deepsynth label --data {folder} --out {folder / 'targets.jsonl'}'; a folder written by "
            "Dataset.save_to_disk works too")


# ---------------------------------------------------------------------------
# The page one row names


def row_page(row: dict[str, Any], image_column: str, *, base_dir: Path, image_root: Path | None = None,
             page_size: pdf.PageSize = pdf.DEFAULT_PAGE_SIZE) -> bytes | None:
    """RGB-decodable bytes of the page ``row`` names (``image``, or ``file`` + ``page``); None when it names none.

    Raises :class:`PageProblem` (with the column at fault) or :class:`ImageProblem`.
    """
    value, column = _reference(row, image_column)
    page = _page_number(row.get(PAGE_COLUMN)) if image_column != PAGE_COLUMN else None
    if value is None:
        if page is not None:
            raise PageProblem(f"page {page} is given but the row names no file in '{image_column}' or "
                              f"'{FILE_COLUMN}'", PAGE_COLUMN)
        return None
    try:
        reference = pdf.parse_reference(os.fspath(value)) if isinstance(value, (str, os.PathLike)) else None
        if reference is not None:
            path_text, number = reference
            _check_same_page(path_text, number, page, column)
            data, described = read_file(path_text, base_dir, image_root, "PDF file")
            return pdf.render_page(data, number if number is not None else page, described=described,
                                   target_size=page_size)
        tiff = tiff_reference(os.fspath(value)) if isinstance(value, (str, os.PathLike)) else None
        if tiff is not None:  # a TIFF may hold several pages: named like a PDF's
            path_text, number = tiff
            _check_same_page(path_text, number, page, column)
            return image_bytes(path_text, base_dir=base_dir, image_root=image_root,
                               page=number if number is not None else page)
        if page not in (None, 1):
            raise PageProblem(f"page {page} is given but {_short(value)} is an image, not a PDF (an image is one "
                              f"page: leave '{PAGE_COLUMN}' empty)", PAGE_COLUMN)
        return image_bytes(value, base_dir=base_dir, image_root=image_root)
    except PageProblem:
        raise
    except ImageProblem as problem:
        raise PageProblem(str(problem), column) from None


def _check_same_page(path_text: str, number: int | None, page: int | None, column: str) -> None:
    if number is not None and page is not None and number != page:
        raise PageProblem(f"{path_text!r} names page {number} but the '{PAGE_COLUMN}' column says {page}; "
                          "give the page once", column)


def _reference(row: dict[str, Any], image_column: str) -> tuple[Any, str]:
    """(the value naming the page, its column); (None, image_column) when the row names none."""
    image = None if _blank(row.get(image_column)) else row.get(image_column)
    named = row.get(FILE_COLUMN) if image_column != FILE_COLUMN else None
    if _blank(named):
        return image, image_column
    if image is not None:
        raise PageProblem(f"the row names a page in '{image_column}' and in '{FILE_COLUMN}'; give it in one of them",
                          FILE_COLUMN)
    if not isinstance(named, str):
        raise PageProblem(f"expected a file name (an image or a PDF), got {type(named).__name__} {_short(named)}",
                          FILE_COLUMN)
    return named, FILE_COLUMN


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):  # an empty cell of a Parquet or pandas column
        return True
    return isinstance(value, str) and not value.strip()


def _page_number(value: Any) -> int | None:
    """The ``page`` cell as a page number (None when empty); CSV cells arrive as text."""
    if _blank(value):
        return None
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        number = int(value.strip())
    if number is None or number < 1:
        raise PageProblem(f"expected a page number from 1 (or nothing), got {_short(value)}", PAGE_COLUMN)
    return number


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:79]}…"


# ---------------------------------------------------------------------------
# Unlabelled pages (deepsynth label)


@dataclass(frozen=True)
class Page:
    """One page to read: an image file, or one page of a PDF."""

    path: Path
    page: int | None = None  # 1-based, PDFs and multi-page TIFFs only

    @property
    def name(self) -> str:
        return self.path.name if self.page is None else f"{self.path.name}#page={self.page}"

    def reference(self, relative_to: Path) -> str:
        """How a data file in ``relative_to`` names this page in its ``image`` column."""
        try:
            text = Path(os.path.relpath(self.path.absolute(), relative_to.absolute())).as_posix()
        except ValueError:  # another drive (Windows): no relative path exists
            text = self.path.absolute().as_posix()
        return text if self.page is None else f"{text}#page={self.page}"


def list_pages(source: Path, limit: int) -> list[Page]:
    """The pages of a folder (its images and every page of its PDFs and multi-page TIFFs), of one such file, or
    one image file.

    Raises :class:`ImageProblem` naming the file (not a page file, an unreadable PDF, over ``limit`` pages).
    """
    if source.is_dir():
        files = page_files(source)
        if not files:
            raise ImageProblem(f"folder {str(source)!r} holds no page images or PDFs "
                               f"({', '.join(_PAGE_SUFFIXES)})")
    elif source.is_file():
        if source.suffix.lower() not in _PAGE_SUFFIXES:
            raise ImageProblem(f"{str(source)!r} is not a page image or a PDF; expected a folder of them or one "
                               f"file ({', '.join(_PAGE_SUFFIXES)})")
        files = [source]
    elif source.exists():  # /dev/zero, a FIFO: there, but nothing to read pages from
        raise ImageProblem(f"{str(source)!r} is not a regular file or a folder (a device, pipe or socket); expected a "
                           "folder of page images and PDFs, or one such file")
    else:
        raise ImageProblem(f"{str(source)!r} not found")
    pages: list[Page] = []
    for path in files:
        if path.suffix.lower() == ".pdf":
            data, described = read_file(path.name, path.parent, None, "PDF file")
            pages += [Page(path, number) for number in range(1, pdf.page_count(data, described) + 1)]
        elif path.suffix.lower() in TIFF_SUFFIXES and (count := image_page_count(
                *read_file(path.name, path.parent, None))) > 1:
            pages += [Page(path, number) for number in range(1, count + 1)]
        else:
            pages.append(Page(path))
        if len(pages) > limit:
            raise ImageProblem(f"{str(source)!r} holds more than {limit:,} pages; label at most {limit:,} at a time")
    return pages


def read_page(page: Page, page_size: pdf.PageSize = pdf.DEFAULT_PAGE_SIZE) -> Image.Image:
    """The page as an RGB image, read and checked as the loader reads a row's page."""
    import io

    row = {FILE_COLUMN: page.path.name, PAGE_COLUMN: page.page}
    data = row_page(row, "image", base_dir=page.path.parent, page_size=page_size)
    assert data is not None
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")
