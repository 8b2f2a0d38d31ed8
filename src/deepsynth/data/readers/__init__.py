"""Readers: each turns one kind of data source (JSON, CSV/TSV, Parquet, `datasets`) into a Table of raw rows."""
