"""Settings shared by the web server, app and stores (no heavy imports: the CLI reads them)."""

from __future__ import annotations

ACCESS_TOKEN_ENV = "DEEPSYNTH_ACCESS_TOKEN"  # a configured token (else a random one per launch)
STATE_DIR_ENV = "DEEPSYNTH_STATE_DIR"
DEFAULT_STATE_DIR = "~/.deepsynth/web"
DEFAULT_MAX_UPLOAD_BYTES = 50 * 2**20
MIN_TOKEN_LENGTH = 16
# PDF pages the rows of one upload may name: validating an upload renders each (about 0.1 s a page on
# a laptop CPU; 5,000 took 521 s).
MAX_UPLOAD_PDF_PAGES = 500
