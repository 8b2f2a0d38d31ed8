"""Trainer routes: the fields a job accepts (from the config's field metadata) and their defaults."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from deepsynth.training.config import TrainerConfig
from deepsynth.web.http import errors
from deepsynth.web.jobs import SERVER_FIELDS

router = APIRouter(tags=["jobs"])


@router.get("/api/trainer/defaults", summary="TrainerConfig defaults (the fields a job accepts)",
            responses=errors())
def trainer_defaults() -> dict[str, Any]:
    defaults = TrainerConfig().to_dict()
    for name in SERVER_FIELDS:
        defaults.pop(name, None)
    return {"defaults": defaults, "server_fields": sorted(SERVER_FIELDS)}
