"""Reader for Parquet files: the footer checked against the limits, then the table read in memory with pyarrow."""

from __future__ import annotations

from pathlib import Path

import datasets

from ..table import MAX_COLUMNS, MAX_ROWS, DataError, Table, cut, too_many_columns, too_many_rows
from .hf_datasets import dataset_table


def parquet_table(path: Path, label: str, base_dir: Path) -> Table:
    """The rows of a Parquet file, refused from its footer when it holds too many rows or columns."""
    import pyarrow.parquet as pq  # datasets' own Parquet engine

    try:
        metadata = pq.ParquetFile(path).metadata  # the footer only: refuse a huge file unread
        if metadata.num_rows > MAX_ROWS:
            raise too_many_rows(label, metadata.num_rows)
        if metadata.num_columns > MAX_COLUMNS:
            raise too_many_columns(label, metadata.num_columns)
        table = pq.read_table(path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"could not be read as Parquet ({cut(exc)})", source=label) from exc
    try:
        # Dataset(table) picks up the feature types datasets stores in the schema
        # metadata (e.g. Image columns), without writing a cache file.
        dataset = datasets.Dataset(table)
    except Exception:  # metadata that datasets cannot read: the columns themselves are still usable
        dataset = datasets.Dataset(table.replace_schema_metadata(None))
    result = dataset_table(dataset, label, base_dir, True)
    result.whole = True
    return result
