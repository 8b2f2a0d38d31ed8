"""Load a user's documents into one canonical `datasets.Dataset`.

Every source (JSON lines, CSV, Parquet, a `save_to_disk` folder, a `Dataset`
object, a Hub name) ends up with the same three columns:

- ``text``: the document text (``""`` allowed only when an image is given),
- ``summary``: the target output, never blank,
- ``image``: a page image, decoded as an RGB ``PIL.Image.Image``; rendered from
  ``text`` when the row has none.

Datasets here are tiny (3-60 documents), so everything is validated and
rendered eagerly: a mistake in row 40 surfaces before a training run starts,
with the file, row and column named. Nothing is written to disk while loading
(the `datasets` file builders would write an Arrow cache, so files are parsed
in memory with the same engines they use: pandas for CSV, pyarrow for Parquet).
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from PIL import Image, ImageOps

from .render import render_document

__all__ = [
    "DataError",
    "FEATURES",
    "SAMPLE_DATA_PATH",
    "load_documents",
    "load_sample_dataset",
]

CANONICAL_COLUMNS = ("text", "summary", "image")

#: Schema of every dataset this module returns.
FEATURES = datasets.Features(
    {
        "text": datasets.Value("string"),
        "summary": datasets.Value("string"),
        # mode="RGB": the vision processors expect 3 channels whatever the file held.
        "image": datasets.Image(mode="RGB"),
    }
)

#: The bundled French sample set (JSON lines with id, text, summary, split).
SAMPLE_DATA_PATH = Path(__file__).resolve().parent / "samples" / "french_documents.jsonl"

_CSV_QUOTING_HINT = "put cells that contain the separator, quotes or line breaks in double quotes"

_FILE_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


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
class _Table:
    """Raw rows of one source, before validation."""

    label: str  # how the user names the source, used in every message
    row_word: str  # "line" for JSON lines, "row" for tables, "item" for JSON arrays
    rows: Iterator[tuple[int, dict[str, Any]]]  # (number as the user sees it, raw row)
    base_dir: Path  # where relative image paths are resolved
    columns: list[str] | None = None  # known up front for tables; JSON rows each carry theirs
    header_location: str | None = None  # where `columns` come from, e.g. the CSV header row
    split_column_ok: bool = True  # False once `split` already picked a split (DatasetDict, Hub)

    def where(self, number: int) -> str:
        return f"{self.row_word} {number}"


# ---------------------------------------------------------------------------
# Public API


def load_documents(
    source: str | os.PathLike[str] | datasets.Dataset | datasets.DatasetDict,
    *,
    column_mapping: Mapping[str, str] | None = None,
    split: str | None = None,
    max_samples: int | None = None,
    base_dir: Path | None = None,
) -> datasets.Dataset:
    """Load and validate documents into the canonical ``text``/``summary``/``image`` columns.

    Args:
        source: a ``.jsonl``/``.json`` (JSON lines, or a JSON array of objects),
            ``.csv``/``.tsv`` or ``.parquet`` file; a folder written by
            ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``; a
            ``datasets.Dataset``/``DatasetDict``; or a Hugging Face Hub dataset
            name (tried only when the string is not an existing path).
        column_mapping: canonical name -> the user's column name, e.g.
            ``{"summary": "target", "text": "document"}``.
        split: for a DatasetDict or Hub dataset, the split to use (default
            ``"train"``). For a single file or Dataset with a ``split`` column,
            keeps the rows whose ``split`` equals it (all rows when None); without
            such a column only ``None``/``"train"`` are accepted.
        max_samples: keep the first N rows; later rows are not read or validated.
        base_dir: folder against which relative image paths are resolved
            (default: the folder holding the data file, or the current directory).

    Returns:
        A ``datasets.Dataset`` with features :data:`FEATURES`; rows without an
        image get one rendered from their text.

    Raises:
        DataError: naming the file, the line/row and the column at fault.
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be a positive integer or None, got {max_samples!r}")
    mapping = _resolve_mapping(column_mapping)
    table = _open(source, split=split, base_dir=base_dir)
    _check_header(table, mapping)

    split_filter = split if table.split_column_ok else None
    if split_filter not in (None, "train") and table.columns is not None and "split" not in table.columns:
        raise _no_split_column(table, split_filter)  # say so before rendering every row
    texts: list[str] = []
    summaries: list[str] = []
    images: list[dict[str, Any]] = []
    splits_seen: set[str] = set()
    saw_split_column = False
    for number, row in table.rows:
        if table.split_column_ok and "split" in row:
            saw_split_column = True
            row_split = "" if row["split"] is None else str(row["split"])
            splits_seen.add(row_split)
            if split_filter is not None and row_split != split_filter:
                continue
        text, summary, image = _validate_row(table, number, row, mapping)
        texts.append(text)
        summaries.append(summary)
        images.append({"bytes": image, "path": None})
        if max_samples is not None and len(texts) >= max_samples:
            break

    if split_filter not in (None, "train") and not saw_split_column:
        raise _no_split_column(table, split_filter)
    if not texts:
        if splits_seen and split_filter is not None:
            found = ", ".join(repr(s) for s in sorted(splits_seen))
            raise DataError(f"no rows with split {split_filter!r} (splits found: {found})", source=table.label)
        raise DataError("no rows: expected at least one document with a summary", source=table.label)

    return datasets.Dataset.from_dict({"text": texts, "summary": summaries, "image": images}, features=FEATURES)


def _no_split_column(table: _Table, split: str) -> DataError:
    return DataError(
        f"split {split!r} was requested but the data has no 'split' column, "
        "so it only holds one split ('train'); pass split=None or add a 'split' column",
        source=table.label,
        column="split",
    )


def load_sample_dataset(split: str = "train", max_samples: int | None = None) -> datasets.Dataset:
    """The bundled French documents (``"train"`` or ``"eval"`` split), with rendered pages."""
    if split not in ("train", "eval"):
        raise ValueError(f"the sample dataset has splits 'train' and 'eval', not {split!r}")
    return load_documents(SAMPLE_DATA_PATH, split=split, max_samples=max_samples)


# ---------------------------------------------------------------------------
# Opening sources


def _open(source: Any, *, split: str | None, base_dir: Path | None) -> _Table:
    if isinstance(source, datasets.DatasetDict):
        chosen = _pick_split(source, split, "the DatasetDict")
        return _dataset_table(chosen, f"DatasetDict split '{split or 'train'}'", base_dir or Path.cwd(), False)
    if isinstance(source, datasets.Dataset):
        return _dataset_table(source, "the Dataset", base_dir or Path.cwd(), True)
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(
            f"expected a file path, a folder, a datasets.Dataset or a Hub dataset name, got {type(source).__name__}"
        )

    path = Path(source).expanduser()
    label = str(source)
    if path.is_dir():
        return _open_saved_dataset(path, label, split, base_dir or path.absolute().parent)
    if path.is_file():
        kind = _FILE_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            supported = ", ".join(_FILE_SUFFIXES)
            raise DataError(
                f"unsupported file type {path.suffix or '(no extension)'!r}; expected one of {supported} "
                "or a folder written by Dataset.save_to_disk",
                source=label,
            )
        directory = base_dir or path.absolute().parent
        if kind in ("jsonl", "json"):
            return _json_table(path, label, directory, allow_array=kind == "json")
        if kind in ("csv", "tsv"):
            return _csv_table(path, label, directory, sep="," if kind == "csv" else "\t")
        return _parquet_table(path, label, directory)
    if isinstance(source, os.PathLike) or _looks_like_path(label):
        raise DataError("file not found", source=label)
    return _hub_table(label, split, base_dir or Path.cwd())


def _looks_like_path(name: str) -> bool:
    # Hub names are "owner/name": anything with a file extension or an explicit
    # relative/absolute prefix is meant as a local path, so say "not found"
    # instead of making a network call that fails confusingly.
    return (
        Path(name).suffix.lower() in _FILE_SUFFIXES
        or name.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or os.path.isabs(name)
        or name.count("/") > 1
    )


def _pick_split(dataset_dict: datasets.DatasetDict, split: str | None, label: str) -> datasets.Dataset:
    wanted = split or "train"
    if wanted not in dataset_dict:
        found = ", ".join(repr(s) for s in dataset_dict)
        raise DataError(f"no split {wanted!r}; available splits: {found}", source=label)
    return dataset_dict[wanted]


def _open_saved_dataset(path: Path, label: str, split: str | None, base_dir: Path) -> _Table:
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError or ValueError depending on what is missing
        raise DataError(
            f"is a folder but not a dataset written by save_to_disk ({exc})", source=label
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        return _dataset_table(_pick_split(loaded, split, label), label, base_dir, False)
    return _dataset_table(loaded, label, base_dir, True)


def _hub_table(name: str, split: str | None, base_dir: Path) -> _Table:
    try:
        loaded = datasets.load_dataset(name, split=split)
    except Exception as exc:  # offline, unknown repo, gated repo... all mean "cannot get it"
        raise DataError(
            "is not a local file or folder, and could not be downloaded from the Hugging Face Hub "
            f"({type(exc).__name__}: {exc})",
            source=name,
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        loaded = _pick_split(loaded, split, name)
    if not isinstance(loaded, datasets.Dataset):
        raise DataError(f"expected a map-style dataset, got {type(loaded).__name__}", source=name)
    return _dataset_table(loaded, f"{name} (split {split or 'train'})", base_dir, False)


def _dataset_table(dataset: datasets.Dataset, label: str, base_dir: Path, split_column_ok: bool) -> _Table:
    # Read images undecoded so a corrupt one is reported with its row, not as
    # an exception from inside datasets.
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Image(decode=False))

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        for index in range(len(dataset)):
            yield index + 1, dataset[index]

    return _Table(
        label=label,
        row_word="row",
        rows=rows(),
        base_dir=base_dir,
        columns=list(dataset.column_names),
        split_column_ok=split_column_ok,
    )


def _parquet_table(path: Path, label: str, base_dir: Path) -> _Table:
    import pyarrow.parquet as pq  # datasets' own Parquet engine

    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise DataError(f"could not be read as Parquet ({exc})", source=label) from exc
    # Dataset(table) picks up the feature types datasets stores in the schema
    # metadata (e.g. Image columns), without writing a cache file.
    return _dataset_table(datasets.Dataset(table), label, base_dir, True)


def _csv_table(path: Path, label: str, base_dir: Path, *, sep: str) -> _Table:
    import pandas as pd  # the engine datasets' CSV builder uses

    with warnings.catch_warnings():
        # pandas only *warns* when a row has more fields than the header, then
        # silently shifts columns; treat that as the error it is.
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            frame = pd.read_csv(
                path,
                sep=sep,
                dtype=object,  # keep every cell as the user typed it
                keep_default_na=False,  # an empty cell is "", not NaN
                index_col=False,
                encoding="utf-8-sig",  # tolerate the BOM spreadsheet programs add
                # Keep undecodable bytes as surrogates, so the exact row and
                # column can be reported instead of a byte offset.
                encoding_errors="surrogateescape",
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

    columns = [str(c) for c in frame.columns]
    for column in columns:
        if _has_surrogates(column):
            raise DataError(_not_utf8_problem(column), source=label, location="row 1", row=1, column=column)

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        for index, record in enumerate(frame.to_dict("records")):
            # The header is row 1 in a spreadsheet, so data starts at row 2.
            yield index + 2, {str(k): v for k, v in record.items()}

    return _Table(
        label=label, row_word="row", rows=rows(), base_dir=base_dir, columns=columns, header_location="row 1"
    )


def _json_table(path: Path, label: str, base_dir: Path, *, allow_array: bool) -> _Table:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"could not be read ({exc})", source=label) from exc
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    # A .json file may hold one JSON array instead of JSON lines; .jsonl never does.
    if allow_array and raw.lstrip()[:1] == b"[":
        return _json_array_table(raw, label, base_dir)
    expected = "one JSON object per line, or a JSON array of objects" if allow_array else "one JSON object per line"
    return _Table(label=label, row_word="line", rows=_json_lines(raw, label, expected), base_dir=base_dir)


def _json_lines(raw: bytes, label: str, expected: str) -> Iterator[tuple[int, dict[str, Any]]]:
    # Parsed line by line (not with datasets' JSON builder) because only this
    # gives the exact line of a bad record or a non-UTF-8 byte.
    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        if not line_bytes.strip():
            continue
        location = f"line {number}"
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _json_encoding_error(line_bytes, exc, label, number) from exc
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"is not valid JSON at character {exc.colno} ({exc.msg}); expected {expected}",
                source=label,
                location=location,
                row=number,
            ) from exc
        if not isinstance(record, dict):
            raise DataError(
                f'expected a JSON object like {{"text": ..., "summary": ...}}, got a {type(record).__name__}',
                source=label,
                location=location,
                row=number,
            )
        yield number, record


def _json_encoding_error(line_bytes: bytes, exc: UnicodeDecodeError, label: str, number: int) -> DataError:
    """Name the field holding the first non-UTF-8 byte of a JSON line, when it can be found."""
    column = None
    try:
        record = json.loads(line_bytes.decode("utf-8", "surrogateescape"))
    except json.JSONDecodeError:
        record = None
    if isinstance(record, dict):
        column = next((str(k) for k, v in record.items() if _has_surrogates(k) or _has_surrogates(v)), None)
    bad = line_bytes[exc.start : exc.start + 1].hex().upper()
    return DataError(
        f"is not valid UTF-8 (byte 0x{bad} at byte {exc.start + 1} of the line); "
        "re-save the file with UTF-8 encoding",
        source=label,
        location=f"line {number}",
        row=number,
        column=column,
    )


def _json_array_table(raw: bytes, label: str, base_dir: Path) -> _Table:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            "is not valid UTF-8; re-save the file with UTF-8 encoding", source=label, location=f"line {line}", row=line
        ) from exc
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"is not valid JSON at character {exc.colno} ({exc.msg})",
            source=label,
            location=f"line {exc.lineno}",
            row=exc.lineno,
        ) from exc

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        for number, record in enumerate(records, start=1):
            if not isinstance(record, dict):
                raise DataError(
                    f"expected a JSON object, got a {type(record).__name__}",
                    source=label,
                    location=f"item {number}",
                    row=number,
                )
            yield number, record

    return _Table(label=label, row_word="item", rows=rows(), base_dir=base_dir)


# ---------------------------------------------------------------------------
# Validation


def _resolve_mapping(column_mapping: Mapping[str, str] | None) -> dict[str, str]:
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


def _column_hint(canonical: str, user_column: str) -> str:
    if canonical == user_column:
        return f"pass column_mapping={{'{canonical}': '<your column>'}} if it has another name"
    return f"(column_mapping maps {canonical!r} to this column)"


def _check_header(table: _Table, mapping: dict[str, str]) -> None:
    """For tabular sources, report a missing column once, before reading rows."""
    if table.columns is None:
        return
    found = ", ".join(repr(c) for c in table.columns) or "none"
    required = ["summary"]
    if mapping["image"] not in table.columns:
        required.append("text")  # with no image, the text is the only input
    for canonical in required:
        column = mapping[canonical]
        if column not in table.columns:
            what = "target output" if canonical == "summary" else "document text"
            raise DataError(
                f"not found (expected the {what}); columns found: {found}; {_column_hint(canonical, column)}",
                source=table.label,
                location=table.header_location,
                row=1 if table.header_location else None,
                column=column,
            )


def _validate_row(
    table: _Table, number: int, row: dict[str, Any], mapping: dict[str, str]
) -> tuple[str, str, bytes]:
    """Check one raw row and return (text, summary, RGB-decodable image bytes)."""
    location = table.where(number)

    def fail(problem: str, column: str | None) -> DataError:
        return DataError(problem, source=table.label, location=location, row=number, column=column)

    for key, value in row.items():
        for part in (key, value):
            if _has_surrogates(part):
                raise fail(_not_utf8_problem(part), str(key))

    summary_col, text_col, image_col = mapping["summary"], mapping["text"], mapping["image"]
    keys = ", ".join(repr(k) for k in row) or "none"

    if summary_col not in row:
        raise fail(f"missing (expected the target output); this row has: {keys}; "
                   f"{_column_hint('summary', summary_col)}", summary_col)
    summary = row[summary_col]
    if summary is not None and not isinstance(summary, str):
        raise fail(f"expected the target output as text, got {type(summary).__name__} {summary!r}", summary_col)
    if summary is None or not summary.strip():
        raise fail("expected a non-empty target output (summary), got an empty value", summary_col)

    image = _image_bytes(row.get(image_col), table, fail, image_col)

    if text_col not in row and image is None:
        raise fail(f"missing (expected the document text, or an image in {image_col!r}); "
                   f"this row has: {keys}; {_column_hint('text', text_col)}", text_col)
    text = row.get(text_col)
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise fail(f"expected the document as text, got {type(text).__name__} {text!r}", text_col)
    if not text.strip() and image is None:
        raise fail(f"is empty and the row has no image in {image_col!r}; expected the document text or an image",
                   text_col)

    if image is None:
        image = _png_bytes(render_document(text))
    return text, summary, image


def _image_bytes(value: Any, table: _Table, fail: Any, column: str) -> bytes | None:
    """Turn any accepted image value into encoded RGB-decodable bytes; None when absent."""
    if value is None:
        return None
    described = "the image"
    if isinstance(value, Image.Image):
        try:
            value.load()
            return _png_bytes(_to_rgb(value))
        except Exception as exc:
            raise fail(f"holds an image that cannot be decoded ({exc})", column) from exc
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data:
            value = data
        elif path:
            value = path
        else:
            return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if not data:
            return None
    elif isinstance(value, (str, os.PathLike)):
        if not str(value).strip():
            return None
        resolved = Path(value).expanduser()
        if not resolved.is_absolute():
            resolved = table.base_dir / resolved
        described = f"image file {str(resolved)!r}"
        if not resolved.is_file():
            raise fail(f"{described} not found (relative paths are resolved against {str(table.base_dir)!r})",
                       column)
        try:
            data = resolved.read_bytes()
        except OSError as exc:
            raise fail(f"{described} could not be read ({exc})", column) from exc
    else:
        raise fail(f"expected an image path, image bytes or a PIL image, got {type(value).__name__}", column)

    try:
        return _normalize_image(data)
    except Exception as exc:  # Pillow raises several types for bad data
        raise fail(f"{described} cannot be decoded as an image ({type(exc).__name__}: {exc})", column) from exc


def _normalize_image(data: bytes) -> bytes:
    """Decode fully (to catch truncated files now) and return bytes that decode to the right RGB page."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        upright = ImageOps.exif_transpose(image)  # phone photos of documents are often stored sideways
        rotated = upright is not image
        if image.mode == "RGB" and not rotated and image.format in ("PNG", "JPEG", "WEBP"):
            return data  # already what the model needs; keep the original compression
        return _png_bytes(_to_rgb(upright))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # A plain convert("RGB") would turn transparent areas black, hiding black text.
        rgba = image.convert("RGBA")
        page = Image.new("RGB", rgba.size, "white")
        page.paste(rgba, mask=rgba.getchannel("A"))
        return page
    return image.convert("RGB")


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _has_surrogates(value: Any) -> bool:
    # Undecodable bytes survive reading as lone surrogates (surrogateescape).
    return isinstance(value, str) and any("\udc80" <= ch <= "\udcff" for ch in value)


def _not_utf8_problem(value: str) -> str:
    bad = next(ch for ch in value if "\udc80" <= ch <= "\udcff")
    byte = ord(bad) - 0xDC00
    return f"is not valid UTF-8 (byte 0x{byte:02X}); re-save the file with UTF-8 encoding"
