"""Routes about the server itself: the page, health, the session cookie, the Hub token's presence."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from deepsynth.web.auth import set_session_cookie
from deepsynth.web.http import errors

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter()


def version() -> str:
    try:
        from importlib.metadata import version as package_version

        return package_version("deepsynth")
    except Exception:
        return "0"


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})


@router.get("/api/health", tags=["server"], responses=errors(),
            summary="Liveness probe; like every /api route it needs the access token")
async def health() -> dict[str, Any]:
    return {"ok": True, "version": version()}


@router.post("/api/session", tags=["server"], summary="Exchange the access token for a session cookie",
             responses=errors())
async def session(request: Request) -> Response:
    # The guard has checked the bearer header (or an existing session cookie) already.
    response = JSONResponse({"ok": True})
    set_session_cookie(response, request.app.state.access_token)
    return response


@router.get("/api/hub", tags=["server"], summary="Whether a Hub token is configured (never the token)",
            responses=errors())
def hub_status() -> dict[str, Any]:
    from deepsynth.publishing.hub import resolve_token

    source = "environment" if os.environ.get("HF_TOKEN") else ("login" if resolve_token() else None)
    return {"token_available": source is not None, "source": source}
