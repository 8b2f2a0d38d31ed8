"""Raw rows of one data source (the Table every reader returns), the error that locates a problem, the limits.

Hostile files stay cheap: the limits below (and those on images, in images.py) are checked before the
expensive step (a JSON line's length before it is parsed, an image's pixel count before it is decoded),
so a broken or hostile file fails in a moment with the limit named.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .pdf import DEFAULT_PAGE_SIZE, PageSize

# Limits on one data file. A long document is rarely over 100 KB of text and the models read at
# most a few pages of it, so these are far above real use and far below what hurts a server.
#: One line of a JSON lines file, or one item of a JSON array, in bytes (checked before parsing).
MAX_LINE_BYTES = 1 << 20
#: The text or the summary of one row, in UTF-8 bytes (any format).
MAX_TEXT_BYTES = 1 << 20
#: Rows read from one source (a file is always read whole).
MAX_ROWS = 10_000
#: Columns of one table: a targets file needs a handful (text, summary, image or file, page, split); pandas
#: took 379 s and 3.5 GB on a CSV of 10^6 columns.
MAX_COLUMNS = 256
# The limits on images (MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS) are in images.py.

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # undecodable bytes kept by "surrogateescape"

# Messages quote values through this: bounded in length and nesting depth.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel = 3


class DataError(ValueError):
    """A problem with the user's data, located as precisely as possible.

    The message reads ``"<file>, <line|row> N, column '<name>': <what was expected>"``;
    the parts are also available as attributes (``source``, ``row``, ``column``).
    """

    def __init__(
        self,
        problem: str,
        *,
        source: str | None = None,
        location: str | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.problem = problem
        self.source = source
        self.location = location
        self.row = row
        self.column = column
        parts = [p for p in (source, location, f"column '{column}'" if column else None) if p]
        super().__init__(f"{', '.join(parts)}: {problem}" if parts else problem)


@dataclass
class Table:
    """Raw rows of one source, before validation."""

    label: str  # how the user names the source, used in every message
    row_word: str  # "line" for JSON lines, "row" for tables, "item" for JSON arrays
    rows: Iterator[tuple[int, dict[str, Any]]]  # (number as the user sees it, raw row)
    base_dir: Path  # where relative image paths are resolved
    columns: list[str] | None = None  # known up front for tables; JSON rows each carry theirs
    header_location: str | None = None  # where `columns` come from, e.g. the CSV header row
    split_column_ok: bool = True  # False once `split` already picked a split (DatasetDict, Hub)
    whole: bool = False  # a local file or folder: every row is validated, whatever max_samples says
    image_root: Path | None = None  # image paths must stay inside this folder (uploads)
    page_size: PageSize = DEFAULT_PAGE_SIZE  # longer side of a rendered PDF page, in pixels

    def where(self, number: int) -> str:
        return f"{self.row_word} {number}"


def too_many_rows(label: str, count: int | None = None) -> DataError:
    """The error for a source over MAX_ROWS (``count`` when known, e.g. from a Parquet footer)."""
    held = f"{count:,} rows" if count is not None else f"more than {MAX_ROWS:,} rows"
    return DataError(
        f"holds {held}; DeepSynth reads at most {MAX_ROWS:,} rows of one source (it fine-tunes on small "
        "document sets, and every row is validated); keep the documents to train and evaluate on in a smaller file",
        source=label,
    )


def too_many_columns(label: str, count: int, location: str | None = None) -> DataError:
    """The error for a table over MAX_COLUMNS columns."""
    return DataError(f"has {count:,} columns; at most {MAX_COLUMNS} (a targets file needs a few: text, summary, "
                     "image or file, page, split)", source=label, location=location, row=1 if location else None)


def short(value: Any) -> str:
    """A bounded repr (length and depth): a message never echoes a whole hostile value."""
    return _REPR.repr(value)


def cut(error: BaseException, limit: int = 200) -> str:
    """A library's error message on one line, cut to ``limit`` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def has_surrogates(value: Any) -> bool:
    """Whether ``value`` is a string holding undecodable bytes (kept as lone surrogates by ``surrogateescape``)."""
    # Undecodable bytes survive reading as lone surrogates (surrogateescape).
    return isinstance(value, str) and _ESCAPED_BYTE.search(value) is not None


def not_utf8_problem(value: str) -> str:
    """The message for a value holding an undecodable byte, naming the byte."""
    match = _ESCAPED_BYTE.search(value)
    assert match is not None
    byte = ord(match.group()) - 0xDC00
    return f"is not valid UTF-8 (byte 0x{byte:02X}); re-save the file with UTF-8 encoding"
