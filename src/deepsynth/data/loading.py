"""Load a user's documents into one canonical `datasets.Dataset`, or check them and count their rows.

Every source (JSON lines, CSV, Parquet, a folder of page images and PDFs with a
targets file, a `save_to_disk` folder, a `Dataset` object, a Hub name) ends up
with the same three columns:

- ``text``: the document text (``""`` allowed only when an image is given),
- ``summary``: the target output, never blank,
- ``image``: a page image, decoded as an RGB ``PIL.Image.Image``; rendered from
  ``text`` when the row has none. A row names its page in ``image`` or in
  ``file`` (+ ``page``); PDF pages are rasterised by :mod:`deepsynth.data.pdf`.

:mod:`deepsynth.data.sources` picks the reader (:mod:`deepsynth.data.readers`),
:mod:`deepsynth.data.validate` checks every row of a file (all splits, also the
rows past ``max_samples``) before a training run starts. Nothing is written to
disk while loading (the `datasets` file builders would write an Arrow cache, so
files are parsed in memory with the same engines they use: pandas for CSV,
pyarrow for Parquet).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from . import folders, pdf
from .images import ImageProblem, png_bytes
from .pdf import DEFAULT_PAGE_SIZE, PageSize
from .render import render_document
from .sources import open_source
from .table import DataError, Table
from .validate import ValidRow, check_header, resolve_mapping, valid_rows

__all__ = ["DocumentCounts", "DocumentSplits", "FEATURES", "FileReferences", "SAMPLE_DATA_PATH", "check_documents", "load_documents",
           "load_sample_dataset", "referenced_files"]

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


@dataclass(frozen=True)
class DocumentCounts:
    """What :func:`check_documents` found in a valid source."""

    rows: int
    splits: dict[str, int] = field(default_factory=dict)  # rows per value of a 'split' column, if any
    train_rows: int = 0  # rows ``load_documents(..., split="train")`` keeps: what the trainer trains on


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
    _check_max_samples(max_samples)
    table, mapping = _prepare(source, column_mapping, split, base_dir, image_root, page_size)
    kept = _select(table, mapping, split if table.split_column_ok else None, max_samples)
    return _canonical_dataset(kept)


def _canonical_dataset(rows: list[ValidRow]) -> datasets.Dataset:
    """The kept rows in the canonical columns; a row without an image gets one rendered from its text."""
    images = [{"bytes": r.image if r.image is not None else png_bytes(render_document(r.text)), "path": None}
              for r in rows]
    return datasets.Dataset.from_dict(
        {"text": [r.text for r in rows], "summary": [r.summary for r in rows], "image": images}, features=FEATURES
    )


def _select(table: Table, mapping: dict[str, str], split: str | None, max_samples: int | None) -> list[ValidRow]:
    """The valid rows of ``split`` (all when None), the first ``max_samples`` of them."""
    if split not in (None, "train") and table.columns is not None and "split" not in table.columns:
        raise _no_split_column(table, split)  # say so before reading every row
    kept, splits_seen = _gather(table, mapping, {split: max_samples})
    return _chosen(table, split, kept[split], splits_seen)


def _gather(table: Table, mapping: dict[str, str],
            limits: Mapping[str | None, int | None]) -> tuple[dict[str | None, list[ValidRow]], set[str]]:
    """One pass over the valid rows: the first rows of each split in ``limits`` (split -> max), and the splits seen."""
    kept: dict[str | None, list[ValidRow]] = {split: [] for split in limits}
    splits_seen: set[str] = set()
    for row in valid_rows(table, mapping):
        if row.split is not None:
            splits_seen.add(row.split)
        for split, max_samples in limits.items():
            if split is not None and row.split is not None and row.split != split:
                continue
            if max_samples is not None and len(kept[split]) >= max_samples:
                if table.whole:
                    continue  # validated, not kept: a bad row anywhere in a file is reported
                return kept, splits_seen  # a Dataset or Hub split is read for one split only, as far as needed
            kept[split].append(row)
    return kept, splits_seen


def _chosen(table: Table, split: str | None, kept: list[ValidRow], splits_seen: set[str]) -> list[ValidRow]:
    """``kept``, the rows of ``split``; DataError when the data has no such split or no rows."""
    if split not in (None, "train") and not splits_seen:
        raise _no_split_column(table, split)
    if not kept:
        if splits_seen and split is not None:
            found = ", ".join(repr(s) for s in sorted(splits_seen))
            raise DataError(f"no rows with split {split!r} (splits found: {found})", source=table.label, column="split")
        raise DataError("no rows: expected at least one document with a summary", source=table.label)
    return kept


class DocumentSplits:
    """Several splits of one source, each as ``load_documents(source, split=..., max_samples=...)`` returns it.

    A local file or folder is validated whole whichever split is asked for, so it is read once for all
    the splits in ``limits`` (split -> max_samples): each PDF page is rendered once, not once per split.
    A DatasetDict or Hub dataset holds its splits apart, and a Dataset is read only as far as needed,
    so those are read per split, when it is asked for.
    """

    def __init__(self, source: Any, limits: Mapping[str, int | None], *,
                 column_mapping: Mapping[str, str] | None = None, page_size: PageSize = DEFAULT_PAGE_SIZE) -> None:
        self._source, self._limits = source, dict(limits)
        self._column_mapping, self._page_size = column_mapping, page_size
        self._read: tuple[Table, dict[str | None, list[ValidRow]], set[str]] | None = None

    def dataset(self, split: str) -> datasets.Dataset:
        """The rows of ``split`` (one of ``limits``); DataError / ValueError as :func:`load_documents` raises them."""
        max_samples = self._limits[split]
        _check_max_samples(max_samples)
        if self._read is None:
            table, mapping = _prepare(self._source, self._column_mapping, split, None, None, self._page_size)
            if not (table.whole and table.split_column_ok):
                return _canonical_dataset(_select(table, mapping, split if table.split_column_ok else None, max_samples))
            if split != "train" and table.columns is not None and "split" not in table.columns:
                raise _no_split_column(table, split)  # as _select: said before reading every row
            self._read = (table, *_gather(table, mapping, self._limits))
        table, kept, splits_seen = self._read
        return _canonical_dataset(_chosen(table, split, kept[split], splits_seen))


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
    for row in valid_rows(table, mapping):
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
             base_dir: Path | None, image_root: Path | None, page_size: PageSize) -> tuple[Table, dict[str, str]]:
    mapping = resolve_mapping(column_mapping)
    table = open_source(source, split=split, base_dir=base_dir)
    table.image_root = Path(image_root) if image_root is not None else None
    table.page_size = page_size
    check_header(table, mapping)
    return table, mapping


def _check_max_samples(max_samples: int | None) -> None:
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be a positive integer or None, got {max_samples!r}")


def _no_split_column(table: Table, split: str) -> DataError:
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


@dataclass(frozen=True)
class FileReferences:
    """The files a data file's rows name (``image`` or ``file``), read without opening them."""

    paths: frozenset[str]  # as written, relative to the data file; a PDF's '#page=N' removed
    pdf_pages: int  # rows naming a page of a PDF: each is rendered when the rows are validated


def referenced_files(source: str | os.PathLike[str], *, column_mapping: Mapping[str, str] | None = None) -> FileReferences:
    """The files the rows of ``source`` name, and how many PDF pages they name, without validating the rows.

    An upload keeps only these files and refuses more PDF pages than it renders; a malformed value is
    skipped here (the validation that follows names it).
    """
    mapping = resolve_mapping(column_mapping)
    table = open_source(source, split=None, base_dir=None)
    paths: set[str] = set()
    pdf_pages = 0
    for _, row in table.rows:
        try:
            value, _ = folders._reference(row, mapping["image"])
            reference = pdf.parse_reference(value) if isinstance(value, str) else None
        except ImageProblem:
            continue
        if reference is not None:
            paths.add(reference[0])
            pdf_pages += 1
        elif isinstance(value, str):
            paths.add(value)
    return FileReferences(frozenset(paths), pdf_pages)
