"""A job request, checked: the fields a client may not set, the dataset ids, and the config it asks for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepsynth.training.boundary import config_from_request
from deepsynth.training.config import TrainerConfig
from deepsynth.training.errors import ConfigError
from deepsynth.web.datasets_store import DatasetNotFound, DatasetRequestError, DatasetStore

# Request fields the server sets itself: each job writes to its own folder, data come from datasets.
SERVER_FIELDS = {
    "output_dir": "set by the server: each job writes to its own folder (download it from /api/jobs/{id}/artifacts)",
    "data_path": "set by the server from dataset_id (upload files through /api/datasets)",
    "eval_data_path": "set by the server from eval_dataset_id (upload files through /api/datasets)",
    "hub_token": "never accepted from a client: the server passes HF_TOKEN (or your `hf auth login`) to the trainer",
}
RESUME_CHOICES = (None, "auto", "never")  # a job resumes only from its own folder: no DIR
_DATASET_HELP = "the id of an uploaded dataset (GET /api/datasets) or 'sample'"


@dataclass(frozen=True)
class CheckedJob:
    """What a valid job request asks for: the run's config and the datasets it reads."""

    config: TrainerConfig
    dataset_id: str
    eval_dataset_id: str | None


def check_job_request(request: Any, datasets: DatasetStore, output_dir: Path) -> CheckedJob:
    """The job ``request`` (TrainerConfig fields + dataset_id [+ eval_dataset_id]) asks for, writing to
    ``output_dir``; ConfigError (422) naming the field at fault, DatasetNotFound (404) for an unknown id."""
    if not isinstance(request, dict):
        raise ConfigError("body", type(request).__name__, "a JSON object of TrainerConfig fields and dataset_id")
    data = dict(request)
    dataset_id = data.pop("dataset_id", None)
    eval_dataset_id = data.pop("eval_dataset_id", None)
    refuse_server_fields(data)
    if not isinstance(dataset_id, str) or not dataset_id:
        raise ConfigError("dataset_id", dataset_id, _DATASET_HELP)
    if eval_dataset_id is not None and (not isinstance(eval_dataset_id, str) or not eval_dataset_id):
        raise ConfigError("eval_dataset_id", eval_dataset_id, "null or the id of an uploaded dataset")
    if data.get("resume_from_checkpoint", None) not in RESUME_CHOICES:
        raise ConfigError("resume_from_checkpoint", data["resume_from_checkpoint"],
                          "'auto' or 'never' (a job resumes only from its own folder)")
    paths = {"output_dir": str(output_dir), "data_path": str(dataset_path(datasets, dataset_id, "dataset_id")),
             "eval_data_path": str(dataset_path(datasets, eval_dataset_id, "eval_dataset_id"))
             if eval_dataset_id else None}
    return CheckedJob(config_from_request(data, server_fields=paths), dataset_id, eval_dataset_id)


def refuse_server_fields(fields: dict[str, Any], prefix: str = "") -> None:
    """ConfigError for the first field of ``fields`` the server sets itself (saying why)."""
    for name in sorted(set(fields) & set(SERVER_FIELDS)):
        raise ConfigError(prefix + name, "<set>", SERVER_FIELDS[name])


def dataset_path(datasets: DatasetStore, dataset_id: str, field: str) -> Path:
    """The data file of ``dataset_id``: ConfigError (422) for a malformed id, DatasetNotFound (404) for none."""
    try:
        return datasets.data_path(dataset_id)
    except DatasetRequestError:
        raise ConfigError(field, dataset_id, _DATASET_HELP) from None
    except DatasetNotFound:  # a well-formed id that names no dataset: 404
        raise DatasetNotFound(f"{field}: no dataset {dataset_id!r} (GET /api/datasets lists them)") from None
