"""Entry point of the ``deepsynth`` console script: parse, run the command, turn its failure into one line."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from deepsynth.cli.parser import build_parser
from deepsynth.training.boundary import describe_error


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deepsynth`` console script."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as error:  # described as the web API and the progress file describe it
        described = describe_error(error, folder=getattr(args, "output_dir", None))
        if described.exit_code is None:
            raise  # a bug, not bad input nor a failed run: its traceback is what helps
        # A failed run's line goes on its own line, after an unfinished progress bar.
        lead = "\n" if described.kind == "disk_full" else ""
        print(f"{lead}error: {described.message}", file=sys.stderr)
        return described.exit_code
