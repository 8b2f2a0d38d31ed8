"""Models: the family table, name resolution, loading (embedded tiny model included) and trained adapters."""
