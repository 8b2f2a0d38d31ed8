"""Reader for CSV and TSV files, parsed in memory with pandas (the engine of datasets' CSV builder)."""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..images import megabytes
from ..table import (
    MAX_COLUMNS,
    MAX_LINE_BYTES,
    MAX_ROWS,
    DataError,
    Table,
    cut,
    has_surrogates,
    not_utf8_problem,
    too_many_columns,
    too_many_rows,
)

_CSV_QUOTING_HINT = "put cells that contain the separator, quotes or line breaks in double quotes"


def csv_table(path: Path, label: str, base_dir: Path, *, sep: str) -> Table:
    """The rows of a CSV (``sep=','``) or TSV file, its header checked against the limits first."""
    _check_csv_width(path, label, sep)
    frame = _read_csv(path, label, sep)
    if len(frame) > MAX_ROWS:
        raise too_many_rows(label)
    columns = [str(c) for c in frame.columns]
    for column in columns:
        if has_surrogates(column):
            raise DataError(not_utf8_problem(column), source=label, location="row 1", row=1, column=column)

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        for index, record in enumerate(frame.to_dict("records")):
            # The header is row 1 in a spreadsheet, so data starts at row 2.
            yield index + 2, {str(k): v for k, v in record.items()}

    return Table(label=label, row_word="row", rows=rows(), base_dir=base_dir, columns=columns,
                  header_location="row 1", whole=True)


def _check_csv_width(path: Path, label: str, sep: str) -> None:
    """Refuse a header row of more than MAX_COLUMNS cells (or longer than MAX_LINE_BYTES) before pandas reads it."""
    with open(path, "rb") as stream:
        head = stream.read(MAX_LINE_BYTES + 1)
    line, newline, _ = head.partition(b"\n")
    if not newline and len(head) > MAX_LINE_BYTES:
        raise DataError(f"its header row is longer than {megabytes(MAX_LINE_BYTES)}; expected at most "
                        f"{MAX_COLUMNS} columns", source=label, location="row 1", row=1)
    try:
        width = len(next(csv.reader([line.decode("utf-8-sig", "replace")], delimiter=sep), []))
    except csv.Error:
        return  # a header csv cannot split alone (a quoted line break): pandas reports it
    if width > MAX_COLUMNS:
        raise too_many_columns(label, width, "row 1")


def _read_csv(path: Path, label: str, sep: str) -> Any:
    import pandas as pd  # the engine datasets' CSV builder uses

    with warnings.catch_warnings():
        # pandas only *warns* when a row has more fields than the header, then
        # silently shifts columns; treat that as the error it is.
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            return pd.read_csv(
                path,
                sep=sep,
                dtype=object,  # keep every cell as the user typed it
                keep_default_na=False,  # an empty cell is "", not NaN
                index_col=False,
                encoding="utf-8-sig",  # tolerate the BOM spreadsheet programs add
                # Keep undecodable bytes as surrogates, so the exact row and
                # column can be reported instead of a byte offset.
                encoding_errors="surrogateescape",
                nrows=MAX_ROWS + 1,  # one more than allowed is enough to refuse the file
            )
        except pd.errors.EmptyDataError as exc:
            raise DataError("no rows: the file is empty", source=label) from exc
        except pd.errors.ParserWarning as exc:
            # pandas only warns (instead of failing) when the *first* data row is too long.
            raise DataError(
                f"has more cells than the header row ({_CSV_QUOTING_HINT})", source=label, location="row 2", row=2
            ) from exc
        except pd.errors.ParserError as exc:
            detail = " ".join(str(exc).split())
            line = re.search(r"\bline (\d+)", detail)
            raise DataError(
                f"is not a well-formed CSV file ({detail}; {_CSV_QUOTING_HINT})",
                source=label,
                location=f"line {line.group(1)}" if line else None,
                row=int(line.group(1)) if line else None,
            ) from exc
        except UnicodeError as exc:  # pandas' Arrow-backed column names refuse escaped bytes
            raise _csv_encoding_error(path, label) from exc
        except Exception as exc:  # anything else pandas raises on a hostile file
            raise DataError(f"could not be read as CSV ({type(exc).__name__}: {cut(exc)})", source=label) from exc


def _csv_encoding_error(path: Path, label: str) -> DataError:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
        start, bad = 0, None
    except UnicodeDecodeError as exc:
        start, bad = exc.start, raw[exc.start : exc.start + 1].hex().upper()
    line = raw[:start].count(b"\n") + 1
    byte = f" (byte 0x{bad})" if bad else ""
    return DataError(f"is not valid UTF-8{byte}; re-save the file with UTF-8 encoding",
                     source=label, location=f"line {line}", row=line)
