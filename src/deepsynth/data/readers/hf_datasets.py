"""Reader for `datasets` sources: a Dataset or DatasetDict object, a `save_to_disk` folder, a Hub dataset name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

from ..table import DataError, Table


def pick_split(dataset_dict: datasets.DatasetDict, split: str | None, label: str) -> datasets.Dataset:
    """The ``split`` (default ``train``) of a DatasetDict; DataError naming the splits it has otherwise."""
    wanted = split or "train"
    if wanted not in dataset_dict:
        found = ", ".join(repr(s) for s in dataset_dict)
        raise DataError(f"no split {wanted!r}; available splits: {found}", source=label)
    return dataset_dict[wanted]


def saved_dataset_table(path: Path, label: str, split: str | None, base_dir: Path) -> Table:
    """The rows of a folder written by ``save_to_disk`` (a Dataset, or a DatasetDict's ``split``), validated whole."""
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError or ValueError depending on what is missing
        raise DataError(
            f"is a folder but not a dataset written by save_to_disk ({exc})", source=label
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        table = dataset_table(pick_split(loaded, split, label), label, base_dir, False)
    else:
        table = dataset_table(loaded, label, base_dir, True)
    table.whole = True
    return table


def hub_table(name: str, split: str | None, base_dir: Path) -> Table:
    """The rows of Hub dataset ``name`` (its ``split``, default ``train``), downloaded by `datasets`."""
    try:
        loaded = datasets.load_dataset(name, split=split)
    except Exception as exc:  # offline, unknown repo, gated repo... all mean "cannot get it"
        raise DataError(
            "is not a local file or folder, and could not be downloaded from the Hugging Face Hub "
            f"({type(exc).__name__}: {exc})",
            source=name,
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        loaded = pick_split(loaded, split, name)
    if not isinstance(loaded, datasets.Dataset):
        raise DataError(f"expected a map-style dataset, got {type(loaded).__name__}", source=name)
    return dataset_table(loaded, f"{name} (split {split or 'train'})", base_dir, False)


def dataset_table(dataset: datasets.Dataset, label: str, base_dir: Path, split_column_ok: bool) -> Table:
    """The rows of a `datasets.Dataset`, images left undecoded so a corrupt one is reported with its row."""
    # Read images undecoded so a corrupt one is reported with its row, not as
    # an exception from inside datasets.
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Image(decode=False))

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        for index in range(len(dataset)):
            yield index + 1, dataset[index]

    return Table(
        label=label,
        row_word="row",
        rows=rows(),
        base_dir=base_dir,
        columns=list(dataset.column_names),
        split_column_ok=split_column_ok,
    )
