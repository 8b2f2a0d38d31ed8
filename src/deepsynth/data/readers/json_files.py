"""Reader for JSON lines files and JSON arrays of objects, one record at a time with its exact line.

JSON lines are read one line at a time, so a 20 MB line costs its first megabyte, not minutes of parsing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..images import megabytes
from ..table import MAX_LINE_BYTES, DataError, Table, has_surrogates


def json_table(path: Path, label: str, base_dir: Path, *, allow_array: bool) -> Table:
    """The records of a JSON lines file, or of a JSON array of objects when ``allow_array`` (a .json file)."""
    try:
        first = _first_byte(path)
    except OSError as exc:
        raise DataError(f"could not be read ({exc.strerror or exc})", source=label) from exc
    # A .json file may hold one JSON array instead of JSON lines; .jsonl never does.
    if allow_array and first == b"[":
        rows = _json_array_rows(path, label)
        return Table(label=label, row_word="item", rows=rows, base_dir=base_dir, whole=True)
    expected = "one JSON object per line, or a JSON array of objects" if allow_array else "one JSON object per line"
    return Table(label=label, row_word="line", rows=_json_lines(path, label, expected), base_dir=base_dir,
                  whole=True)


def _first_byte(path: Path) -> bytes:
    """The first byte of the file that is not a BOM or white space (b"" when there is none)."""
    with path.open("rb") as handle:
        chunk = handle.read(1 << 16)
        if chunk.startswith(b"\xef\xbb\xbf"):
            chunk = chunk[3:]
        while chunk:
            stripped = chunk.lstrip()
            if stripped:
                return stripped[:1]
            chunk = handle.read(1 << 16)
    return b""


def _json_lines(path: Path, label: str, expected: str) -> Iterator[tuple[int, dict[str, Any]]]:
    # Read line by line (not with datasets' JSON builder) because only this gives
    # the exact line of a bad record or a non-UTF-8 byte, and a line's length is
    # checked before it is held whole or parsed: a 20 MB line costs 1 MB, not minutes.
    with path.open("rb") as handle:
        number = 0
        while line_bytes := handle.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(line_bytes) > MAX_LINE_BYTES and not line_bytes.endswith(b"\n"):
                raise DataError(
                    f"is longer than {megabytes(MAX_LINE_BYTES)}, the limit for one line (one document and its "
                    "summary; a long document is rarely over 100 KB); shorten the text or split the document",
                    source=label, location=f"line {number}", row=number,
                )
            if number == 1 and line_bytes.startswith(b"\xef\xbb\xbf"):
                line_bytes = line_bytes[3:]  # the BOM some editors write
            if line_bytes.strip():
                yield number, _json_record(line_bytes, label, number, expected)


def _json_record(line_bytes: bytes, label: str, number: int, expected: str) -> dict[str, Any]:
    location = f"line {number}"
    try:
        line = line_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _json_encoding_error(line_bytes, exc, label, number) from exc
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"is not valid JSON at character {exc.colno} ({exc.msg}); expected {expected}",
                        source=label, location=location, row=number) from exc
    except (RecursionError, ValueError) as exc:
        raise DataError(f"cannot be parsed: {_json_limit_problem(exc)}; expected {expected}",
                        source=label, location=location, row=number) from exc
    if not isinstance(record, dict):
        raise DataError(
            f'expected a JSON object like {{"text": ..., "summary": ...}}, got a {type(record).__name__}',
            source=label, location=location, row=number,
        )
    return record


def _json_limit_problem(exc: BaseException) -> str:
    """What a parse that failed on a limit (not on syntax) ran into."""
    if isinstance(exc, RecursionError):
        return "arrays or objects are nested too deeply (a document row needs no nesting)"
    if "digits" in str(exc):
        return "a number has more than 4,300 digits"
    return str(exc)


def _json_encoding_error(line_bytes: bytes, exc: UnicodeDecodeError, label: str, number: int) -> DataError:
    """Name the field holding the first non-UTF-8 byte of a JSON line, when it can be found."""
    column = None
    try:
        record = json.loads(line_bytes.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        record = None
    if isinstance(record, dict):
        column = next((str(k) for k, v in record.items() if has_surrogates(k) or has_surrogates(v)), None)
    bad = line_bytes[exc.start : exc.start + 1].hex().upper()
    return DataError(
        f"is not valid UTF-8 (byte 0x{bad} at byte {exc.start + 1} of the line); "
        "re-save the file with UTF-8 encoding",
        source=label,
        location=f"line {number}",
        row=number,
        column=column,
    )


def _json_array_rows(path: Path, label: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The items of a JSON array file, parsed one at a time (json.loads would build them all at once)."""
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            "is not valid UTF-8; re-save the file with UTF-8 encoding", source=label, location=f"line {line}", row=line
        ) from exc
    del raw
    decoder = json.JSONDecoder()
    space = re.compile(r"\s*")
    position = space.match(text, text.index("[") + 1).end()
    number = 0
    while position < len(text) and text[position] != "]":
        number += 1
        if number > 1:
            if text[position] != ",":
                raise _json_array_syntax(text, position, "expected ',' or ']' after an item", label)
            position = space.match(text, position + 1).end()
        start = position
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise _json_array_syntax(text, exc.pos, exc.msg, label) from exc
        except (RecursionError, ValueError) as exc:
            raise DataError(f"cannot be parsed: {_json_limit_problem(exc)}", source=label,
                            location=f"item {number}", row=number) from exc
        _check_item(record, position - start, label, number)
        position = space.match(text, position).end()
        yield number, record
    if position >= len(text) or text[position + 1 :].strip():
        raise _json_array_syntax(text, min(position, len(text)), "expected one JSON array of objects", label)


def _check_item(record: Any, size: int, label: str, number: int) -> None:
    if size > MAX_LINE_BYTES:
        raise DataError(f"is larger than {megabytes(MAX_LINE_BYTES)}, the limit for one document and its summary",
                        source=label, location=f"item {number}", row=number)
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got a {type(record).__name__}", source=label,
                        location=f"item {number}", row=number)


def _json_array_syntax(text: str, position: int, problem: str, label: str) -> DataError:
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return DataError(f"is not valid JSON at character {column} ({problem})", source=label,
                     location=f"line {line}", row=line)
