"""Readers: each turns one kind of data source (JSON, CSV/TSV, Parquet, a `datasets` dataset) into a Table of raw rows."""
