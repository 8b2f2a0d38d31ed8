"""``deepsynth serve``: run the web app with uvicorn, behind an access token (as Jupyter does).

Every launch has an access token: ``$DEEPSYNTH_ACCESS_TOKEN`` or ``--token-file`` when the user
configures one, else a random one made for this launch (``secrets.token_urlsafe``). Once the server
listens, it prints the address to open, ``http://127.0.0.1:PORT/?token=…``, on standard output — the
token appears there only for a per-launch token (a configured one is never echoed) and only when standard
output is a terminal; redirected, the token goes to ``<state>/access-token`` (mode 600, removed when the
server stops) and the printed lines say so. Never in a log record or an API response; the access log
hides the ``token`` parameter however its name is percent-encoded. One server per state folder: a
second one is refused before it starts (one ``error:`` line). Loopback (127.0.0.1) by default; any other address needs a
configured token (at least 16 characters): the server refuses to start without one.

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
import secrets
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_plus

from deepsynth.training.errors import ConfigError
from deepsynth.web.settings import (
    ACCESS_TOKEN_ENV,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_STATE_DIR,
    MIN_TOKEN_LENGTH,
    STATE_DIR_ENV,
)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
TOKEN_FILE_NAME = "access-token"  # in the state folder, mode 600, while a server whose output is not a terminal runs


def redact_query(text: str) -> str:
    """``text`` with the value of every query parameter whose name, percent-decoded, is ``token`` hidden.

    The guard signs in on ``?token=``, which Starlette finds after percent-decoding the name (``?tok%65n=``
    too); the access log prints the raw query, so the redaction decodes names the same way.
    """
    if "?" not in text:
        return text
    path, _, rest = text.partition("?")
    query, space, tail = rest.partition(" ")
    parts = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        parts.append(f"{name}=[hidden]" if equals and unquote_plus(name).strip().lower() == "token" else part)
    return f"{path}?{'&'.join(parts)}{space}{tail}"


class RedactToken(logging.Filter):
    """Hides the ``token`` query parameter, however spelled, in uvicorn's access log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        return True


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
    """Refuse a short configured token, and a non-loopback address without a configured token."""
    if access_token is not None and len(access_token) < MIN_TOKEN_LENGTH:
        raise ConfigError(ACCESS_TOKEN_ENV, "<hidden>", f"at least {MIN_TOKEN_LENGTH} characters")
    if not is_loopback(host) and not access_token:
        raise ConfigError(
            "host", host,
            f"a loopback address (127.0.0.1, localhost, ::1), or set {ACCESS_TOKEN_ENV} (or --token-file) to an "
            f"access token of at least {MIN_TOKEN_LENGTH} characters to serve on other interfaces",
        )


def read_token_file(path: str | Path) -> str:
    """The token in ``path`` (first line), which no other user may read (like ssh's private keys)."""
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
        token = path.read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError("--token-file", str(path), f"a readable UTF-8 text file ({error})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError("--token-file", str(path), "a file only its owner can read (chmod 600)")
    if not token or not token[0].strip():
        raise ConfigError("--token-file", str(path), "a file whose first line is the token")
    return token[0].strip()


def login_url(host: str, port: int, token: str | None) -> str:
    """The address the user opens: with ``?token=`` for a per-launch token."""
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}/"
    return f"{base}?token={quote(token, safe='')}" if token else base


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    state_dir: Path | str | None = None,
    *,
    access_token: str | None = None,
    allowed_models: Sequence[str] = (),
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_concurrent_jobs: int = 1,
    stop_jobs_on_exit: bool = False,
    log_level: str = "info",
    **app_options: Any,
) -> None:
    """Serve the app until interrupted.

    ``access_token`` defaults to ``$DEEPSYNTH_ACCESS_TOKEN``, else a random token for this launch.
    ``port`` 0 takes a free port (the printed address says which). ``app_options`` go to
    :func:`deepsynth.web.app.create_app` (``job_command``, ``poll_interval_s``, ...).
    """
    import uvicorn

    from deepsynth.web.app import create_app

    if access_token is None:
        access_token = os.environ.get(ACCESS_TOKEN_ENV) or None
    check_bind(host, access_token)
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError("port", port, "an integer in [0, 65535]")
    generated = access_token is None
    token = secrets.token_urlsafe(32) if generated else access_token
    state = Path(state_dir).expanduser() if state_dir else default_state_dir()
    # On loopback only loopback names are served (DNS rebinding protection); elsewhere any Host.
    allowed = [*LOOPBACK_NAMES, host] if is_loopback(host) else None
    app = create_app(state, access_token=token, allowed_models=allowed_models, max_upload_bytes=max_upload_bytes,
                     max_concurrent_jobs=max_concurrent_jobs, allowed_hosts=allowed,
                     stop_jobs_on_shutdown=stop_jobs_on_exit, **app_options)
    # Another server on this folder: one error line now, not a traceback from uvicorn's start-up.
    app.state.jobs.lock()
    logging.getLogger(__name__).info("DeepSynth serving state folder %s", state)
    token_file: list[Path] = []

    class AnnouncingServer(uvicorn.Server):
        """uvicorn's server, printing the sign-in address once it listens (so with the real port)."""

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started and self.servers and self.servers[0].sockets:
                bound = self.servers[0].sockets[0].getsockname()[1]
                token_file.extend(_announce(host, bound, token if generated else None, state))

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level)  # (re)configures uvicorn's loggers
    logging.getLogger("uvicorn.access").addFilter(RedactToken())
    try:
        AnnouncingServer(config).run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled; uvicorn.run() swallows it too
        pass
    finally:
        for path in token_file:  # as Jupyter removes its runtime files: the token dies with the server
            _remove_token_file(path, token)


def _stdout_is_terminal() -> bool:
    try:
        return sys.stdout is not None and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _announce(host: str, port: int, token: str | None, state: Path) -> list[Path]:
    """Print the address to open; returns the token file it wrote, if any.

    A per-launch token is printed in the address only when standard output is a terminal: redirected
    (``deepsynth serve > log``), the file would keep it with the umask's permissions (world-readable
    under 022), so the token goes to ``<state>/access-token`` (mode 600) instead, as Jupyter's runtime
    files, and the printed lines say where. Never a log record: a handler could write it anywhere.
    """
    base = login_url(host, port, None)
    if token is None:
        print(f"DeepSynth web UI: {base}  (sign in with your {ACCESS_TOKEN_ENV} / --token-file token)\n"
              f"  state folder: {state}", file=sys.stdout, flush=True)
        return []
    if _stdout_is_terminal():
        print(f"DeepSynth web UI: {login_url(host, port, token)}\n  state folder: {state}", file=sys.stdout, flush=True)
        return []
    path = write_token_file(state / TOKEN_FILE_NAME, token)
    print(f"DeepSynth web UI: {base}\n"
          f"  access token: in {path} (readable by you only; not printed, since standard output is not a "
          f"terminal): open {base}?token=<that token>, or paste it in the sign-in form\n"
          f"  state folder: {state}", file=sys.stdout, flush=True)
    return [path]


def write_token_file(path: Path, token: str) -> Path:
    """Write ``token`` to ``path``, readable by its owner only (mode 600 whatever the umask), atomically."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # an existing temporary file keeps its mode otherwise
        os.write(descriptor, (token + "\n").encode())
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
    return path


def _remove_token_file(path: Path, token: str) -> None:
    try:
        if path.read_text(encoding="utf-8").strip() == token:  # not one a newer server wrote
            path.unlink()
    except OSError:
        pass


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``deepsynth serve``."""
    parser.add_argument("--host", default="127.0.0.1",
                        help=f"address to bind (default 127.0.0.1; others need ${ACCESS_TOKEN_ENV} or --token-file)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    parser.add_argument("--state-dir", default=None,
                        help=f"datasets, jobs and their database (default ${STATE_DIR_ENV} or {DEFAULT_STATE_DIR})")
    # No --token flag: a command line is visible to every local user (ps); environment and files are not.
    parser.add_argument("--token-file", default=None,
                        help=f"read the access token from this file (mode 600) instead of ${ACCESS_TOKEN_ENV}; "
                             "without either, a random token is made for this launch and printed in the URL")
    parser.add_argument("--model", action="append", default=[], metavar="NAME_OR_DIR",
                        help="a model API clients may name besides Hub ids and folders in the state folder "
                             "(repeatable; the embedded default is always allowed)")
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
    if args.max_concurrent_jobs < 1:  # before the state folder is made
        raise ConfigError("--max-concurrent-jobs", args.max_concurrent_jobs, "an integer >= 1")
    token = read_token_file(args.token_file) if args.token_file else None
    serve(args.host, args.port, args.state_dir, access_token=token, allowed_models=args.model,
          max_upload_bytes=int(args.max_upload_mb * 2**20), max_concurrent_jobs=args.max_concurrent_jobs,
          stop_jobs_on_exit=args.stop_jobs_on_exit)
    return 0
