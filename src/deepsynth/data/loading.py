"""Load a user's documents into one canonical `datasets.Dataset`.

Every source (JSON lines, CSV, Parquet, a folder of page images and PDFs with a
targets file, a `save_to_disk` folder, a `Dataset` object, a Hub name) ends up
with the same three columns:

- ``text``: the document text (``""`` allowed only when an image is given),
- ``summary``: the target output, never blank,
- ``image``: a page image, decoded as an RGB ``PIL.Image.Image``; rendered from
  ``text`` when the row has none. A row names its page in ``image`` or in
  ``file`` (+ ``page``); PDF pages are rasterised by :mod:`deepsynth.data.pdf`.

Datasets here are tiny (3-60 documents), so everything is validated eagerly:
every row of a file (all splits, also the rows past ``max_samples``) is checked
before a training run starts, and a mistake in row 40 surfaces with the file, row
and column named. Nothing is written to disk while loading (the `datasets` file
builders would write an Arrow cache, so files are parsed in memory with the same
engines they use: pandas for CSV, pyarrow for Parquet).

Hostile files stay cheap: the limits below (and those on images, in images.py)
are checked before the expensive step (a JSON line's length before it is parsed,
an image's pixel count before it is decoded), so a broken or hostile file fails
in a moment with the limit named. JSON lines are read one line at a time, so a
20 MB line costs its first megabyte, not minutes of parsing.
"""

from __future__ import annotations

import json
import os
import re
import reprlib
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from . import folders
from .images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, ImageProblem, megabytes, png_bytes
from .pdf import DEFAULT_PAGE_SIZE, PageSize
from .render import render_document

__all__ = [
    "DataError",
    "DocumentCounts",
    "FEATURES",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_LINE_BYTES",
    "MAX_ROWS",
    "MAX_TEXT_BYTES",
    "SAMPLE_DATA_PATH",
    "check_documents",
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

# Limits on one data file. A long document is rarely over 100 KB of text and the models read at
# most a few pages of it, so these are far above real use and far below what hurts a server.
#: One line of a JSON lines file, or one item of a JSON array, in bytes (checked before parsing).
MAX_LINE_BYTES = 1 << 20
#: The text or the summary of one row, in UTF-8 bytes (any format).
MAX_TEXT_BYTES = 1 << 20
#: Rows read from one source (a file is always read whole).
MAX_ROWS = 10_000
# The limits on images (MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS) are in images.py.

_CSV_QUOTING_HINT = "put cells that contain the separator, quotes or line breaks in double quotes"

_FILE_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}

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
class _Table:
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


@dataclass
class _Row:
    """One validated row; ``image`` is None when the page is to be rendered from the text."""

    split: str | None  # the row's 'split' value; None when it has none
    text: str
    summary: str
    image: bytes | None


@dataclass(frozen=True)
class DocumentCounts:
    """What :func:`check_documents` found in a valid source."""

    rows: int
    splits: dict[str, int] = field(default_factory=dict)  # rows per value of a 'split' column, if any
    train_rows: int = 0  # rows ``load_documents(..., split="train")`` keeps: what the trainer trains on


# ---------------------------------------------------------------------------
# Public API


def load_documents(
    source: str | os.PathLike[str] | datasets.Dataset | datasets.DatasetDict,
    *,
    column_mapping: Mapping[str, str] | None = None,
    split: str | None = None,
    max_samples: int | None = None,
    base_dir: Path | None = None,
    image_root: Path | None = None,
    page_size: PageSize = DEFAULT_PAGE_SIZE,
) -> datasets.Dataset:
    """Load and validate documents into the canonical ``text``/``summary``/``image`` columns.

    Args:
        source: a ``.jsonl``/``.json`` (JSON lines, or a JSON array of objects),
            ``.csv``/``.tsv`` or ``.parquet`` file; a folder of page images and/or
            PDFs with one such file beside them (the targets file, see
            :mod:`deepsynth.data.folders`); a folder written by
            ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``; a
            ``datasets.Dataset``/``DatasetDict``; or a Hugging Face Hub dataset
            name (tried only when the string is not an existing path). A row's
            page is its ``image`` (a path, ``file.pdf#page=N``, bytes or an
            image) or its ``file`` and ``page`` columns.
        column_mapping: canonical name -> the user's column name, e.g.
            ``{"summary": "target", "text": "document"}``.
        split: for a DatasetDict or Hub dataset, the split to use (default
            ``"train"``). For a single file or Dataset with a ``split`` column,
            keeps the rows whose ``split`` equals it (all rows when None); without
            such a column only ``None``/``"train"`` are accepted.
        max_samples: keep the first N rows. A local file is still validated
            whole (every split, every row); a Dataset or Hub dataset is read only
            as far as needed.
        base_dir: folder against which relative image paths are resolved
            (default: the folder holding the data file, or the current directory).
        image_root: when given, every image path must name a file inside this
            folder (the web app's uploads): absolute paths, paths climbing out with
            ``..`` and symbolic links leading out are refused with one message,
            whether or not the file they name exists. Without it (the command
            line), paths are the user's own: relative ones resolve against
            ``base_dir``, absolute ones are read as given.
        page_size: the longer side, in pixels, of a rendered PDF page, or a
            function of the page's (width, height) in points giving it
            (:func:`deepsynth.data.pdf.page_size_for` reads it from a processor).

    Returns:
        A ``datasets.Dataset`` with features :data:`FEATURES`; rows without an
        image get one rendered from their text.

    Raises:
        DataError: naming the file, the line/row and the column at fault, or the
            limit (:data:`MAX_LINE_BYTES`, :data:`MAX_TEXT_BYTES`, :data:`MAX_ROWS`,
            :data:`MAX_IMAGE_BYTES`, :data:`MAX_IMAGE_PIXELS`) a file goes over.
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be a positive integer or None, got {max_samples!r}")
    table, mapping = _prepare(source, column_mapping, split, base_dir, image_root, page_size)
    kept = _select(table, mapping, split if table.split_column_ok else None, max_samples)
    images = [{"bytes": r.image if r.image is not None else png_bytes(render_document(r.text)), "path": None}
              for r in kept]
    return datasets.Dataset.from_dict(
        {"text": [r.text for r in kept], "summary": [r.summary for r in kept], "image": images}, features=FEATURES
    )


def _select(table: _Table, mapping: dict[str, str], split: str | None, max_samples: int | None) -> list[_Row]:
    """The valid rows of ``split`` (all when None), the first ``max_samples`` of them."""
    if split not in (None, "train") and table.columns is not None and "split" not in table.columns:
        raise _no_split_column(table, split)  # say so before reading every row
    kept: list[_Row] = []
    splits_seen: set[str] = set()
    for row in _valid_rows(table, mapping):
        if row.split is not None:
            splits_seen.add(row.split)
            if split is not None and row.split != split:
                continue
        if max_samples is not None and len(kept) >= max_samples:
            if table.whole:
                continue  # validated, not kept: a bad row anywhere in a file is reported
            break
        kept.append(row)
    if split not in (None, "train") and not splits_seen:
        raise _no_split_column(table, split)
    if not kept:
        if splits_seen and split is not None:
            found = ", ".join(repr(s) for s in sorted(splits_seen))
            raise DataError(f"no rows with split {split!r} (splits found: {found})", source=table.label, column="split")
        raise DataError("no rows: expected at least one document with a summary", source=table.label)
    return kept


def check_documents(
    source: str | os.PathLike[str] | datasets.Dataset,
    *,
    column_mapping: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    image_root: Path | None = None,
    page_size: PageSize = DEFAULT_PAGE_SIZE,
) -> DocumentCounts:
    """Validate every row as :func:`load_documents` does, without rendering pages; return the counts.

    Raises :class:`DataError` for the first bad row, and when a ``split`` column
    leaves no ``train`` rows (the trainer would have nothing to train on).
    """
    table, mapping = _prepare(source, column_mapping, None, base_dir, image_root, page_size)
    rows = train_rows = 0
    splits: dict[str, int] = {}
    for row in _valid_rows(table, mapping):
        rows += 1
        if row.split is not None:
            splits[row.split] = splits.get(row.split, 0) + 1
        train_rows += row.split is None or row.split == "train"
    if not rows:
        raise DataError("no rows: expected at least one document with a summary", source=table.label)
    if not train_rows:
        found = ", ".join(f"{value!r}: {count}" for value, count in sorted(splits.items()))
        raise DataError(
            f"no row has the value 'train' (found {found}); training uses the 'train' rows and "
            "evaluates on the 'eval' rows, so mark the documents to train on with 'train'",
            source=table.label, column="split",
        )
    return DocumentCounts(rows=rows, splits=splits, train_rows=train_rows)


def _prepare(source: Any, column_mapping: Mapping[str, str] | None, split: str | None,
             base_dir: Path | None, image_root: Path | None, page_size: PageSize) -> tuple[_Table, dict[str, str]]:
    mapping = _resolve_mapping(column_mapping)
    table = _open(source, split=split, base_dir=base_dir)
    table.image_root = Path(image_root) if image_root is not None else None
    table.page_size = page_size
    _check_header(table, mapping)
    return table, mapping


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
        if folders.is_saved_dataset(path):
            return _open_saved_dataset(path, label, split, base_dir or path.absolute().parent)
        # A folder of pages: its one targets file, read as if it had been given (paths relative to it).
        found = folders.data_files(path, tuple(_FILE_SUFFIXES))
        if len(found) != 1:
            raise DataError(folders.missing_targets_problem(path, found, tuple(_FILE_SUFFIXES)), source=label)
        return _open_file(found[0], os.path.join(label, found[0].name), base_dir)
    if path.is_file():
        return _open_file(path, label, base_dir)
    if path.exists():  # /dev/zero, a FIFO: "not found" would send the user looking for a file that is there
        raise DataError("is not a regular file or a folder (a device, pipe or socket); expected a data file or a "
                        "folder of pages", source=label)
    if isinstance(source, os.PathLike) or _looks_like_path(label):
        raise DataError("file not found", source=label)
    return _hub_table(label, split, base_dir or Path.cwd())


def _open_file(path: Path, label: str, base_dir: Path | None) -> _Table:
    kind = _FILE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        supported = ", ".join(_FILE_SUFFIXES)
        hint = (" (a PDF or an image is a page: name it in a targets file, or give the folder holding them "
                "and their targets file)" if path.suffix.lower() in (".pdf", *folders.IMAGE_SUFFIXES) else "")
        raise DataError(
            f"unsupported file type {path.suffix or '(no extension)'!r}; expected one of {supported}, "
            f"a folder of pages with a targets file, or a folder written by Dataset.save_to_disk{hint}",
            source=label,
        )
    directory = base_dir or path.absolute().parent
    if kind in ("jsonl", "json"):
        return _json_table(path, label, directory, allow_array=kind == "json")
    if kind in ("csv", "tsv"):
        return _csv_table(path, label, directory, sep="," if kind == "csv" else "\t")
    return _parquet_table(path, label, directory)


def _looks_like_path(name: str) -> bool:
    # Hub names are "owner/name": anything with a file extension or an explicit
    # relative/absolute prefix is meant as a local path, so say "not found"
    # instead of making a network call that fails confusingly.
    return (
        Path(name).suffix.lower() in (*_FILE_SUFFIXES, ".pdf", *folders.IMAGE_SUFFIXES)
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
        table = _dataset_table(_pick_split(loaded, split, label), label, base_dir, False)
    else:
        table = _dataset_table(loaded, label, base_dir, True)
    table.whole = True
    return table


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


def _too_many_rows(label: str, count: int | None = None) -> DataError:
    held = f"{count:,} rows" if count is not None else f"more than {MAX_ROWS:,} rows"
    return DataError(
        f"holds {held}; DeepSynth reads at most {MAX_ROWS:,} rows of one source (it fine-tunes on small "
        "document sets, and every row is validated); keep the documents to train and evaluate on in a smaller file",
        source=label,
    )


def _parquet_table(path: Path, label: str, base_dir: Path) -> _Table:
    import pyarrow.parquet as pq  # datasets' own Parquet engine

    try:
        num_rows = pq.ParquetFile(path).metadata.num_rows  # the footer only: refuse a huge file unread
        if num_rows > MAX_ROWS:
            raise _too_many_rows(label, num_rows)
        table = pq.read_table(path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"could not be read as Parquet ({_cut(exc)})", source=label) from exc
    try:
        # Dataset(table) picks up the feature types datasets stores in the schema
        # metadata (e.g. Image columns), without writing a cache file.
        dataset = datasets.Dataset(table)
    except Exception:  # metadata that datasets cannot read: the columns themselves are still usable
        dataset = datasets.Dataset(table.replace_schema_metadata(None))
    result = _dataset_table(dataset, label, base_dir, True)
    result.whole = True
    return result


def _csv_table(path: Path, label: str, base_dir: Path, *, sep: str) -> _Table:
    frame = _read_csv(path, label, sep)
    if len(frame) > MAX_ROWS:
        raise _too_many_rows(label)
    columns = [str(c) for c in frame.columns]
    for column in columns:
        if _has_surrogates(column):
            raise DataError(_not_utf8_problem(column), source=label, location="row 1", row=1, column=column)

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        for index, record in enumerate(frame.to_dict("records")):
            # The header is row 1 in a spreadsheet, so data starts at row 2.
            yield index + 2, {str(k): v for k, v in record.items()}

    return _Table(label=label, row_word="row", rows=rows(), base_dir=base_dir, columns=columns,
                  header_location="row 1", whole=True)


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
            raise DataError(f"could not be read as CSV ({type(exc).__name__}: {_cut(exc)})", source=label) from exc


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


def _json_table(path: Path, label: str, base_dir: Path, *, allow_array: bool) -> _Table:
    try:
        first = _first_byte(path)
    except OSError as exc:
        raise DataError(f"could not be read ({exc.strerror or exc})", source=label) from exc
    # A .json file may hold one JSON array instead of JSON lines; .jsonl never does.
    if allow_array and first == b"[":
        rows = _json_array_rows(path, label)
        return _Table(label=label, row_word="item", rows=rows, base_dir=base_dir, whole=True)
    expected = "one JSON object per line, or a JSON array of objects" if allow_array else "one JSON object per line"
    return _Table(label=label, row_word="line", rows=_json_lines(path, label, expected), base_dir=base_dir,
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
    if mapping["image"] not in table.columns and folders.FILE_COLUMN not in table.columns:
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


def _valid_rows(table: _Table, mapping: dict[str, str]) -> Iterator[_Row]:
    """Every row of the table, validated, with its 'split' value; at most MAX_ROWS of them."""
    count = 0
    for number, raw in table.rows:
        count += 1
        if count > MAX_ROWS:
            raise _too_many_rows(table.label)
        split = None
        if table.split_column_ok and "split" in raw:
            split = _split_value(raw["split"], table, number)
        text, summary, image = _validate_row(table, number, raw, mapping)
        yield _Row(split, text, summary, image)


def _split_value(value: Any, table: _Table, number: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)):
        raise DataError(f"expected a split name such as 'train' or 'eval', got {type(value).__name__} {_short(value)}",
                        source=table.label, location=table.where(number), row=number, column="split")
    return str(value)


def _validate_row(
    table: _Table, number: int, row: dict[str, Any], mapping: dict[str, str]
) -> tuple[str, str, bytes | None]:
    """Check one raw row and return (text, summary, RGB-decodable image bytes or None)."""
    location = table.where(number)

    def fail(problem: str, column: str | None) -> DataError:
        return DataError(problem, source=table.label, location=location, row=number, column=column)

    for key, value in row.items():
        for part in (key, value):
            if _has_surrogates(part):
                raise fail(_not_utf8_problem(part), str(key))

    summary_col, text_col, image_col = mapping["summary"], mapping["text"], mapping["image"]
    keys = ", ".join(_short(k) for k in list(row)[:20]) + (", ..." if len(row) > 20 else "") if row else "none"

    if summary_col not in row:
        raise fail(f"missing (expected the target output); this row has: {keys}; "
                   f"{_column_hint('summary', summary_col)}", summary_col)
    summary = row[summary_col]
    if summary is not None and not isinstance(summary, str):
        raise fail(f"expected the target output as text, got {type(summary).__name__} {_short(summary)}", summary_col)
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
                   f"this row has: {keys}; {_column_hint('text', text_col)}", text_col)
    text = row.get(text_col)
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise fail(f"expected the document as text, got {type(text).__name__} {_short(text)}", text_col)
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


def _short(value: Any) -> str:
    """A bounded repr (length and depth): a message never echoes a whole hostile value."""
    return _REPR.repr(value)


def _cut(error: BaseException, limit: int = 200) -> str:
    """A library's error message on one line, cut to ``limit`` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _has_surrogates(value: Any) -> bool:
    # Undecodable bytes survive reading as lone surrogates (surrogateescape).
    return isinstance(value, str) and _ESCAPED_BYTE.search(value) is not None


def _not_utf8_problem(value: str) -> str:
    match = _ESCAPED_BYTE.search(value)
    assert match is not None
    byte = ord(match.group()) - 0xDC00
    return f"is not valid UTF-8 (byte 0x{byte:02X}); re-save the file with UTF-8 encoding"
