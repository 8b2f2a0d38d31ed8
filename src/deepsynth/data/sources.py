"""Source choice: which reader opens what the user named (file, folder of pages, saved dataset, Dataset, Hub name)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import datasets

from . import folders
from .readers.csv_files import csv_table
from .readers.hf_datasets import dataset_table, hub_table, pick_split, saved_dataset_table
from .readers.json_files import json_table
from .readers.parquet_files import parquet_table
from .table import DataError, Table

#: Data file suffixes → the reader's kind.
FILE_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


def open_source(source: Any, *, split: str | None, base_dir: Path | None) -> Table:
    """The raw rows of ``source`` (``split`` picks a DatasetDict's or Hub dataset's split)."""
    if isinstance(source, datasets.DatasetDict):
        chosen = pick_split(source, split, "the DatasetDict")
        return dataset_table(chosen, f"DatasetDict split '{split or 'train'}'", base_dir or Path.cwd(), False)
    if isinstance(source, datasets.Dataset):
        return dataset_table(source, "the Dataset", base_dir or Path.cwd(), True)
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(
            f"expected a file path, a folder, a datasets.Dataset or a Hub dataset name, got {type(source).__name__}"
        )

    path = Path(source).expanduser()
    label = str(source)
    if path.is_dir():
        if folders.is_saved_dataset(path):
            return saved_dataset_table(path, label, split, base_dir or path.absolute().parent)
        # A folder of pages: its one targets file, read as if it had been given (paths relative to it).
        found = folders.data_files(path, tuple(FILE_SUFFIXES))
        if len(found) != 1:
            raise DataError(folders.missing_targets_problem(path, found, tuple(FILE_SUFFIXES)), source=label)
        return _open_file(found[0], os.path.join(label, found[0].name), base_dir)
    if path.is_file():
        return _open_file(path, label, base_dir)
    if path.exists():  # /dev/zero, a FIFO: "not found" would send the user looking for a file that is there
        raise DataError("is not a regular file or a folder (a device, pipe or socket); expected a data file or a "
                        "folder of pages", source=label)
    if isinstance(source, os.PathLike) or _looks_like_path(label):
        raise DataError("file not found", source=label)
    return hub_table(label, split, base_dir or Path.cwd())


def _open_file(path: Path, label: str, base_dir: Path | None) -> Table:
    kind = FILE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        supported = ", ".join(FILE_SUFFIXES)
        hint = (" (a PDF or an image is a page: name it in a targets file, or give the folder holding them "
                "and their targets file)" if path.suffix.lower() in (".pdf", *folders.IMAGE_SUFFIXES) else "")
        raise DataError(
            f"unsupported file type {path.suffix or '(no extension)'!r}; expected one of {supported}, "
            f"a folder of pages with a targets file, or a folder written by Dataset.save_to_disk{hint}",
            source=label,
        )
    directory = base_dir or path.absolute().parent
    if kind in ("jsonl", "json"):
        return json_table(path, label, directory, allow_array=kind == "json")
    if kind in ("csv", "tsv"):
        return csv_table(path, label, directory, sep="," if kind == "csv" else "\t")
    return parquet_table(path, label, directory)


def _looks_like_path(name: str) -> bool:
    # Hub names are "owner/name": anything with a file extension or an explicit
    # relative/absolute prefix is meant as a local path, so say "not found"
    # instead of making a network call that fails confusingly.
    return (
        Path(name).suffix.lower() in (*FILE_SUFFIXES, ".pdf", *folders.IMAGE_SUFFIXES)
        or name.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or os.path.isabs(name)
        or name.count("/") > 1
    )
