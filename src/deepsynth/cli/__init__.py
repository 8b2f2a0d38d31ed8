"""``deepsynth`` command line: a thin shell over the library functions (the console script runs :func:`main`)."""

from deepsynth.cli.entry import main

__all__ = ["main"]
