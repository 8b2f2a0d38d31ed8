"""``python -m deepsynth.cli`` (also under ``accelerate launch -m``): the console script's entry point."""

import sys

from deepsynth.cli.entry import main

sys.exit(main())
