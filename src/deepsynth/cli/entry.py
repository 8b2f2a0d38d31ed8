"""Entry point of the ``deepsynth`` console script: parse, run the command, turn its failure into one line."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from deepsynth.cli.parser import build_parser
from deepsynth.training.errors import ConfigError, DiskFullError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deepsynth`` console script."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parser = build_parser()
    args = parser.parse_args(argv)
    from deepsynth.publishing import PushError

    try:
        return args.func(args)
    except PushError as error:  # the run's files are written; the upload is what failed
        print(f"error: push failed: {error}", file=sys.stderr)
        return 1
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except DiskFullError as error:  # not bad input: the run failed; earlier checkpoints are kept
        print(f"\nerror: {error}", file=sys.stderr)  # on its own line, after an unfinished progress bar
        return 1
    except OSError as error:
        return _report_disk_full(error, getattr(args, "output_dir", None))


def _report_disk_full(error: OSError, output_dir: str | None) -> int:
    """A full disk outside a save (the run folder's first files): one line, exit 1; any other OSError is raised."""
    import errno

    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        raise error
    where = f" writing {error.filename}" if error.filename else (f" in {output_dir}" if output_dir else "")
    print(f"\nerror: disk full{where}: {error.strerror}; nothing was trained: free some space and rerun the same "
          "command", file=sys.stderr)
    return 1
