"""Settings shared by the web server, app and stores (no heavy imports: the CLI reads them)."""

from __future__ import annotations

ACCESS_TOKEN_ENV = "DEEPSYNTH_ACCESS_TOKEN"  # required to serve on anything but loopback
STATE_DIR_ENV = "DEEPSYNTH_STATE_DIR"
DEFAULT_STATE_DIR = "~/.deepsynth/web"
DEFAULT_MAX_UPLOAD_BYTES = 50 * 2**20
MIN_TOKEN_LENGTH = 16
