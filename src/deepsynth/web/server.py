"""``deepsynth serve``: run the web app with uvicorn.

Loopback (127.0.0.1) by default. Any other address needs an access token the user chooses
(``DEEPSYNTH_ACCESS_TOKEN``, at least 16 characters): the server refuses to start without it.

CLI wiring (in ``deepsynth.cli.build_parser``)::

    from deepsynth.web.server import add_serve_arguments, run_serve
    p = sub.add_parser("serve", help="run the web UI and API")
    add_serve_arguments(p); p.set_defaults(func=run_serve)
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path

from deepsynth.training.errors import ConfigError
from deepsynth.web.settings import (
    ACCESS_TOKEN_ENV,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_STATE_DIR,
    MIN_TOKEN_LENGTH,
    STATE_DIR_ENV,
)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """Is ``host`` an address only this machine can reach (127.0.0.0/8, ::1, localhost)?"""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR).expanduser()


def check_bind(host: str, access_token: str | None) -> None:
    """Refuse a non-loopback address without a (long enough) access token."""
    if access_token is not None and len(access_token) < MIN_TOKEN_LENGTH:
        raise ConfigError(ACCESS_TOKEN_ENV, "<hidden>", f"at least {MIN_TOKEN_LENGTH} characters")
    if not is_loopback(host) and not access_token:
        raise ConfigError(
            "host", host,
            f"a loopback address (127.0.0.1, localhost, ::1), or set {ACCESS_TOKEN_ENV} to an access token of "
            f"at least {MIN_TOKEN_LENGTH} characters to serve on other interfaces",
        )


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    state_dir: Path | str | None = None,
    *,
    access_token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_concurrent_jobs: int = 1,
    stop_jobs_on_exit: bool = False,
    log_level: str = "info",
) -> None:
    """Serve the app until interrupted. ``access_token`` defaults to ``$DEEPSYNTH_ACCESS_TOKEN``."""
    import uvicorn

    from deepsynth.web.app import create_app

    if access_token is None:
        access_token = os.environ.get(ACCESS_TOKEN_ENV) or None
    check_bind(host, access_token)
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError("port", port, "an integer in [0, 65535]")
    state = Path(state_dir).expanduser() if state_dir else default_state_dir()
    # Without a token, only loopback names are served (DNS rebinding protection); with one, any Host.
    allowed = None if access_token else [*LOOPBACK_NAMES, host]
    app = create_app(state, access_token=access_token, max_upload_bytes=max_upload_bytes,
                     max_concurrent_jobs=max_concurrent_jobs, allowed_hosts=allowed,
                     stop_jobs_on_shutdown=stop_jobs_on_exit)
    shown = f"[{host}]" if ":" in host else host
    logging.getLogger(__name__).info("DeepSynth on http://%s:%d (state in %s)", shown, port, state)
    print(f"DeepSynth web UI: http://{shown}:{port}/  (state folder: {state})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``deepsynth serve``."""
    parser.add_argument("--host", default="127.0.0.1",
                        help=f"address to bind (default 127.0.0.1; others need ${ACCESS_TOKEN_ENV})")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--state-dir", default=None,
                        help=f"datasets, jobs and their database (default ${STATE_DIR_ENV} or {DEFAULT_STATE_DIR})")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_BYTES / 2**20,
                        help="largest dataset upload in MB (default 50)")
    parser.add_argument("--max-concurrent-jobs", type=int, default=1,
                        help="training processes at once (default 1; the others wait in a queue)")
    parser.add_argument("--stop-jobs-on-exit", action="store_true",
                        help="cancel running jobs when the server stops (default: they go on and the next "
                             "server on this state folder picks them up)")


def run_serve(args: argparse.Namespace) -> int:
    """``deepsynth serve`` command: returns the exit status."""
    if args.max_upload_mb <= 0:
        raise ConfigError("--max-upload-mb", args.max_upload_mb, "a number > 0")
    serve(args.host, args.port, args.state_dir, max_upload_bytes=int(args.max_upload_mb * 2**20),
          max_concurrent_jobs=args.max_concurrent_jobs, stop_jobs_on_exit=args.stop_jobs_on_exit)
    return 0
