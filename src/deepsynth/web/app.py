"""The DeepSynth web app: a JSON API over the library plus a one-page UI (``static/``).

Every route calls the same library function as the CLI (presets, ``recommend``, ``plan_run``,
``count_trainable_params``, ``build_config``, ``push_adapter``): nothing is decided twice. The routes
live in :mod:`deepsynth.web.routes`, one router per resource; this module assembles them with the
guard (:mod:`deepsynth.web.auth`: access token, session cookie, same origin, DNS rebinding) and the
error handlers (:mod:`deepsynth.web.http`). Errors are JSON ``{"error": "<message naming the
field>"}`` with a 4xx status for anything a client sends; the Hub token is never read from or
returned to a client.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from deepsynth.training.errors import ConfigError
from deepsynth.web.auth import Guard
from deepsynth.web.datasets_store import DatasetStore
from deepsynth.web.http import add_error_handlers, import_libraries, openapi
from deepsynth.web.jobs.processes import CommandBuilder, train_command
from deepsynth.web.jobs.supervisor import JobManager
from deepsynth.web.model_policy import ModelPolicy
from deepsynth.web.routes import datasets, jobs as job_routes, lora, server, trainer
from deepsynth.web.routes.server import STATIC_DIR, version
from deepsynth.web.settings import ACCESS_TOKEN_ENV, DEFAULT_MAX_UPLOAD_BYTES, MIN_TOKEN_LENGTH  # noqa: F401

logger = logging.getLogger(__name__)
ROUTERS = (server.router, lora.router, trainer.router, datasets.router, job_routes.router)


def _lifespan(jobs: JobManager, state_dir: Path, stop_jobs_on_shutdown: bool):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        jobs.start()
        # In the background, so the server answers at once; a request that needs them waits for it.
        threading.Thread(target=import_libraries, name="deepsynth-imports", daemon=True).start()
        try:
            yield
        finally:
            running = jobs.list(status="running")
            if running and not stop_jobs_on_shutdown:
                logger.warning("%d training job(s) still running; the next server on %s picks them up",
                               len(running), state_dir)
            await anyio.to_thread.run_sync(lambda: jobs.close(stop_running=stop_jobs_on_shutdown))

    return lifespan


def create_app(
    state_dir: Path,
    *,
    access_token: str,
    allowed_models: Sequence[str] = (),
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_concurrent_jobs: int = 1,
    cancel_grace_s: float = 30.0,
    poll_interval_s: float = 0.5,
    job_command: CommandBuilder = train_command,
    allowed_hosts: Sequence[str] | None = None,
    stop_jobs_on_shutdown: bool = False,
) -> FastAPI:
    """Build the app over ``state_dir`` (datasets, jobs, jobs.sqlite3).

    ``access_token`` (required, at least 16 characters) guards every API route; ``allowed_models``
    are the models clients may name besides Hub ids and folders in ``state_dir`` (see ModelPolicy).
    The job supervisor starts with the app's lifespan (uvicorn, or ``with TestClient(app)``).
    """
    if not isinstance(access_token, str) or len(access_token) < MIN_TOKEN_LENGTH:
        raise ConfigError("access_token", "<hidden>", f"a string of at least {MIN_TOKEN_LENGTH} characters")
    state_dir = Path(state_dir).expanduser()
    # A new state folder is private (0700): its datasets, logs and adapters are the owner's alone.
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (state_dir / "tmp").mkdir(exist_ok=True)
    store = DatasetStore(state_dir, max_upload_bytes=max_upload_bytes)
    jobs = JobManager(state_dir, store, max_concurrent_jobs=max_concurrent_jobs, cancel_grace_s=cancel_grace_s,
                      poll_interval_s=poll_interval_s, command=job_command)
    hosts = {h.lower().strip("[]") for h in allowed_hosts} if allowed_hosts is not None else None
    app = FastAPI(
        title="DeepSynth",
        summary="LoRA fine-tuning of DeepSeek-OCR-family MoE models on a handful of documents",
        version=version(), lifespan=_lifespan(jobs, state_dir, stop_jobs_on_shutdown),
        docs_url=None, redoc_url=None,  # the docs pages load scripts from a CDN; the schema is served
    )
    app.state.store, app.state.jobs, app.state.state_dir = store, jobs, state_dir
    app.state.models, app.state.access_token = ModelPolicy(state_dir, allowed_models), access_token
    app.add_middleware(Guard, access_token=access_token, hosts=hosts)
    add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.openapi = lambda: openapi(app)
    return app
