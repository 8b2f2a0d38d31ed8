"""Every TrainerConfig field (optimizer fields included) can be set from every interface, or is on
that interface's short, commented list of exclusions.

Each interface is a function that sets a few fields the way a user does and returns the config it
builds: the CLI (flags) and the API (a job request, read back from the queued job). The web form is
driven in a real page by tests/web/test_web_form_fields.py (every field set in its input, the job
started with the page's button, the queued job's config compared).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deepsynth.cli.flags import flag_overrides, train_flags
from deepsynth.cli.parser import build_parser
from deepsynth.cli.train import train_config
from deepsynth.training.config import config_fields
from deepsynth.web.app import create_app

TOKEN = "field-reachability-token-0123456789"

FIELDS = {info.name: info for info in config_fields()}

# A valid value for each field that differs from its default; by kind unless a field needs its own.
VALUES: dict[str, Any] = {
    "model_name": "org/some-model", "output_dir": "outputs/elsewhere", "preset": "balanced",
    "scheduler_type": "linear", "lora_bias": "all", "lora_quantization": "8bit", "dtype": "bfloat16",
    "resume_from_checkpoint": "never", "data_path": "docs.jsonl", "eval_data_path": "eval.jsonl",
    "instruction": "Résume le document.", "hub_model_id": "org/name", "task": "transcribe", "image_mode": "gundam",
}
BY_KIND: dict[str, Any] = {"int": 3, "float": 0.25, "number": 12.5, "list": ["q_proj", "router"],
                           "dict": {"summary": "target", "text": "document"}}
# Fields that are only valid together with another.
COMPANIONS: dict[str, dict[str, Any]] = {
    "push_to_hub": {"hub_model_id": "org/name"},
    "early_stopping_patience": {"eval_every_updates": 2},
}


def sample(name: str) -> Any:
    info = FIELDS[name]
    if name in VALUES:
        return VALUES[name]
    if info.kind == "bool":
        return not info.default
    return BY_KIND[info.kind]


def through_cli(values: dict[str, Any]) -> dict[str, Any]:
    """``deepsynth train`` with one flag per value; the config it would run, flat."""
    names = {info.name: flag for flag, info in train_flags().items()}
    argv = ["train"]
    for name, value in values.items():
        flag = names[name]
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag.removeprefix("--"))
        elif isinstance(value, dict):
            argv += [flag, ",".join(f"{k}={v}" for k, v in value.items())]
        elif isinstance(value, list):
            argv += [flag, ",".join(value)]
        else:
            argv += [flag, str(value)]
    args = build_parser().parse_args(argv)
    config = train_config(args, flag_overrides(args))[0].to_dict()
    return {**config, **config.pop("optimizer")}


def cli_names() -> set[str]:
    return {info.name for info in train_flags().values()}


@functools.cache
def web_client() -> TestClient:
    """The real app without its lifespan: jobs are queued (their config saved), never started."""
    state = Path(tempfile.mkdtemp(prefix="deepsynth-reach-"))
    atexit.register(shutil.rmtree, state, True)
    return TestClient(create_app(state, access_token=TOKEN), headers={"Authorization": f"Bearer {TOKEN}"})


def submitted_config(payload: dict[str, Any]) -> dict[str, Any]:
    client = web_client()
    response = client.post("/api/jobs", json={"dataset_id": "sample", **payload})
    assert response.status_code == 201, response.json()
    config = client.get(f"/api/jobs/{response.json()['id']}").json()["config"]
    return {**config, **config.pop("optimizer")}


def through_api(values: dict[str, Any]) -> dict[str, Any]:
    """``POST /api/jobs`` with the values; the config the queued job will run, flat."""
    return submitted_config(values)


def api_names() -> set[str]:
    return set(web_client().app.openapi()["components"]["schemas"]["JobRequest"]["properties"]) - {"optimizer"}


# interface → (set some fields and return the resulting config, flat; the field names it offers).
INTERFACES: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], Callable[[], set[str]]]] = {
    "cli": (through_cli, cli_names),
    "api": (through_api, api_names),
}
# Set by the server, never by a client (web/jobs/requests.py SERVER_FIELDS says why to the client too).
_SERVER_OWNED = {
    "output_dir": "server-owned: each job writes to its own folder under the state folder",
    "data_path": "server-owned: from dataset_id (uploads go through /api/datasets)",
    "eval_data_path": "server-owned: from eval_dataset_id",
    "hub_token": "secret: the server passes HF_TOKEN to the trainer; never accepted from a client",
}
# interface → field → why it cannot be set there.
EXCLUDED: dict[str, dict[str, str]] = {
    "cli": {
        # A secret on a command line ends up in shell history and `ps`; huggingface_hub reads
        # HF_TOKEN (or the login cache) when the config's token is None.
        "hub_token": "secret: from HF_TOKEN, never a flag",
    },
    "api": dict(_SERVER_OWNED),
}


@pytest.mark.parametrize("interface", sorted(INTERFACES))
@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_field_is_reachable_or_excluded(interface, name):
    build, offered = INTERFACES[interface]
    if name in EXCLUDED[interface]:
        assert name not in offered(), f"{name} is excluded from the {interface} but offered there"
        return
    value = sample(name)
    assert value != FIELDS[name].default, name  # else the check below proves nothing
    config = build({**COMPANIONS.get(name, {}), name: value})
    expected = list(value) if isinstance(value, (list, tuple)) else value
    assert config[name] == expected, (interface, name, config[name])


def test_exclusions_name_real_fields_and_stay_short():
    for interface, excluded in EXCLUDED.items():
        assert set(excluded) <= set(FIELDS), interface
        assert len(excluded) <= 5, interface
        assert all(reason.strip() for reason in excluded.values())


def test_no_flag_takes_the_hub_token(capsys):
    assert "hub_token" not in cli_names()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--hub-token", "hf_x"])
    assert "unrecognized arguments: --hub-token" in capsys.readouterr().err
