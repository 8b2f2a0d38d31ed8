"""Validation of raw rows: the column mapping, the header, and each row's text, summary, split and page.

Datasets here are tiny (3-60 documents), so every row is validated eagerly, and a mistake in row 40
surfaces with the file, row and column named.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import folders
from .images import ImageProblem, megabytes
from .table import MAX_ROWS, MAX_TEXT_BYTES, DataError, Table, has_surrogates, not_utf8_problem, short, too_many_rows

CANONICAL_COLUMNS = ("text", "summary", "image")


@dataclass
class ValidRow:
    """One validated row; ``image`` is None when the page is to be rendered from the text."""

    split: str | None  # the row's 'split' value; None when it has none
    text: str
    summary: str
    image: bytes | None


def resolve_mapping(column_mapping: Mapping[str, str] | None) -> dict[str, str]:
    """Canonical column name → the user's column name, every canonical name present (``column_mapping`` checked)."""
    mapping = {name: name for name in CANONICAL_COLUMNS}
    for canonical, user_column in (column_mapping or {}).items():
        if canonical not in CANONICAL_COLUMNS:
            raise DataError(
                f"column_mapping key {canonical!r} is not one of {', '.join(CANONICAL_COLUMNS)} "
                "(the mapping goes canonical name -> your column name)"
            )
        if not isinstance(user_column, str) or not user_column:
            raise DataError(f"column_mapping[{canonical!r}] must be a column name, got {user_column!r}")
        mapping[canonical] = user_column
    return mapping


def column_hint(canonical: str, user_column: str) -> str:
    """How to point the loader at a column of another name, or which mapping chose this one."""
    if canonical == user_column:
        return f"pass column_mapping={{'{canonical}': '<your column>'}} if it has another name"
    return f"(column_mapping maps {canonical!r} to this column)"


def check_header(table: Table, mapping: dict[str, str]) -> None:
    """For tabular sources, report a missing column once, before reading rows."""
    if table.columns is None:
        return
    found = ", ".join(repr(c) for c in table.columns) or "none"
    required = ["summary"]
    if mapping["image"] not in table.columns and folders.FILE_COLUMN not in table.columns:
        required.append("text")  # with no image, the text is the only input
    for canonical in required:
        column = mapping[canonical]
        if column not in table.columns:
            what = "target output" if canonical == "summary" else "document text"
            raise DataError(
                f"not found (expected the {what}); columns found: {found}; {column_hint(canonical, column)}",
                source=table.label,
                location=table.header_location,
                row=1 if table.header_location else None,
                column=column,
            )


def valid_rows(table: Table, mapping: dict[str, str]) -> Iterator[ValidRow]:
    """Every row of the table, validated, with its 'split' value; at most MAX_ROWS of them."""
    count = 0
    for number, raw in table.rows:
        count += 1
        if count > MAX_ROWS:
            raise too_many_rows(table.label)
        split = None
        if table.split_column_ok and "split" in raw:
            split = _split_value(raw["split"], table, number)
        text, summary, image = _validate_row(table, number, raw, mapping)
        yield ValidRow(split, text, summary, image)


def _split_value(value: Any, table: Table, number: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)):
        raise DataError(f"expected a split name such as 'train' or 'eval', got {type(value).__name__} {short(value)}",
                        source=table.label, location=table.where(number), row=number, column="split")
    return str(value)


def _validate_row(
    table: Table, number: int, row: dict[str, Any], mapping: dict[str, str]
) -> tuple[str, str, bytes | None]:
    """Check one raw row and return (text, summary, RGB-decodable image bytes or None)."""
    location = table.where(number)

    def fail(problem: str, column: str | None) -> DataError:
        return DataError(problem, source=table.label, location=location, row=number, column=column)

    for key, value in row.items():
        for part in (key, value):
            if has_surrogates(part):
                raise fail(not_utf8_problem(part), str(key))

    summary_col, text_col, image_col = mapping["summary"], mapping["text"], mapping["image"]
    keys = ", ".join(short(k) for k in list(row)[:20]) + (", ..." if len(row) > 20 else "") if row else "none"

    if summary_col not in row:
        raise fail(f"missing (expected the target output); this row has: {keys}; "
                   f"{column_hint('summary', summary_col)}", summary_col)
    summary = row[summary_col]
    if summary is not None and not isinstance(summary, str):
        raise fail(f"expected the target output as text, got {type(summary).__name__} {short(summary)}", summary_col)
    if summary is None or not summary.strip():
        raise fail("expected a non-empty target output (summary), got an empty value", summary_col)
    _check_text(summary, fail, summary_col)

    try:
        image = folders.row_page(row, image_col, base_dir=table.base_dir, image_root=table.image_root,
                                 page_size=table.page_size)
    except ImageProblem as problem:
        raise fail(str(problem), getattr(problem, "column", None) or image_col) from None

    if text_col not in row and image is None:
        raise fail(f"missing (expected the document text, or an image in {image_col!r}); "
                   f"this row has: {keys}; {column_hint('text', text_col)}", text_col)
    text = row.get(text_col)
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise fail(f"expected the document as text, got {type(text).__name__} {short(text)}", text_col)
    if not text.strip() and image is None:
        raise fail(f"is empty and the row has no image in {image_col!r}; expected the document text or an image",
                   text_col)
    _check_text(text, fail, text_col)
    return text, summary, image


def _check_text(value: str, fail: Any, column: str) -> None:
    """The text must be storable (UTF-8) and within MAX_TEXT_BYTES."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:  # a lone surrogate, e.g. the JSON escape "\ud800"
        code = ord(value[exc.start])
        raise fail(f"holds \\u{code:04x} at character {exc.start + 1}, half of a UTF-16 surrogate pair and not a "
                   "character; remove it or write the whole character", column) from None
    if size > MAX_TEXT_BYTES:
        raise fail(f"is {megabytes(size)} of text; at most {megabytes(MAX_TEXT_BYTES)} per cell (a long document is rarely "
                   "over 100 KB); shorten it or split the document", column)
