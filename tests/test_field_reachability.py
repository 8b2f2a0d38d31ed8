"""Every TrainerConfig field (optimizer fields included) can be set from every interface, or is on
that interface's short, commented list of exclusions.

Each interface is a function that sets a few fields the way a user does and returns the config it
builds. The CLI is here; the web step adds the API (a job request) and the UI (the job form) to
``INTERFACES`` and ``EXCLUDED``, and every field is then checked through them too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from deepsynth.cli import _train_config, build_parser, flag_overrides, train_flags
from deepsynth.training.config import config_fields

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
    config = _train_config(args, flag_overrides(args))[0].to_dict()
    return {**config, **config.pop("optimizer")}


def cli_names() -> set[str]:
    return {info.name for info in train_flags().values()}


# interface → (set some fields and return the resulting config, flat; the field names it offers).
INTERFACES: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], Callable[[], set[str]]]] = {
    "cli": (through_cli, cli_names),
}
# interface → field → why it cannot be set there.
EXCLUDED: dict[str, dict[str, str]] = {
    "cli": {
        # A secret on a command line ends up in shell history and `ps`; huggingface_hub reads
        # HF_TOKEN (or the login cache) when the config's token is None.
        "hub_token": "secret: from HF_TOKEN, never a flag",
    },
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
