"""The web's run plan and form fields: the library's plan_run and config_fields, served as they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from web_support import ACCESS_TOKEN, AUTH

from deepsynth.training.config import TrainerConfig, build_config, config_fields
from deepsynth.training.plan import plan_run
from deepsynth.web.app import create_app

@pytest.fixture
def idle(state_dir: Path) -> TestClient:
    """The app without its lifespan (nothing here starts a job)."""
    return TestClient(create_app(state_dir, access_token=ACCESS_TOKEN), headers=AUTH)


def upload(client: TestClient, filename: str, content: bytes):
    return client.post("/api/datasets", files={"file": (filename, content)})


ROWS = [{"text": f"Document {i} parle de la ville numéro {i}.", "summary": f"Ville {i}."} for i in range(7)]


def test_plan_of_an_uploaded_dataset_is_plan_run_of_its_file(idle):
    content = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ROWS).encode()
    info = upload(idle, "notes.jsonl", content).json()
    answer = idle.post("/api/trainer/plan", json={"dataset_id": info["id"], "overrides": {"num_epochs": 3}})
    assert answer.status_code == 200, answer.json()
    plan = answer.json()
    path = idle.app.state.store.data_path(info["id"])
    expected = plan_run(build_config(None, None, {"num_epochs": 3, "data_path": str(path)}),
                        recommend_settings=True, keep=("num_epochs",)).to_dict()
    # Counts from the data loader: 7 rows, no 'eval' split, so the plan holds some out.
    assert plan["data"]["num_samples"] == 7 == expected["data"]["num_samples"]
    assert plan["data"]["eval_from"] == "holdout" and plan["data"]["train_samples"] < 7
    assert plan["updates"] == expected["updates"] and plan["warnings"] == expected["warnings"]
    assert plan["kept"] == {"num_epochs": 3} and plan["config"]["num_epochs"] == 3
    assert "data_path" not in plan["config"] and "output_dir" not in plan["config"]


def test_plan_refuses_server_fields_and_bad_values(idle):
    refused = idle.post("/api/trainer/plan", json={"dataset_id": "sample", "overrides": {"output_dir": "/tmp/x"}})
    assert refused.status_code == 422 and "output_dir" in refused.json()["error"]
    bad = idle.post("/api/trainer/plan", json={"dataset_id": "sample", "overrides": {"num_epochs": "2"}})
    assert bad.status_code == 422 and "num_epochs" in bad.json()["error"]
    missing = idle.post("/api/trainer/plan", json={"dataset_id": "nope123"})
    assert missing.status_code in (400, 404) and "dataset_id" in missing.json()["error"]


def test_fields_are_the_configs_metadata(idle):
    served = {f["name"]: f for f in idle.get("/api/trainer/fields").json()["fields"]}
    for info in config_fields():
        if info.name in ("output_dir", "data_path", "eval_data_path", "hub_token"):
            assert info.name not in served
            continue
        field = served[info.name]
        assert field["help"] == info.help and field["kind"] == info.kind, info.name
        default = list(info.default) if isinstance(info.default, tuple) else info.default
        assert field["default"] == default, info.name
    assert served["scheduler_type"]["choices"] == ["cosine", "linear", "constant", "none"]
    assert TrainerConfig().num_epochs == served["num_epochs"]["default"]


def test_one_request_makes_one_config_through_the_cli_the_job_and_the_plan(idle, tmp_path):
    """The same settings (a preset, a whole optimizer object with a flat field over it, a warmup in
    steps) give the same config from `deepsynth train`, POST /api/jobs and POST /api/trainer/plan."""
    from deepsynth.cli.flags import flag_overrides
    from deepsynth.cli.parser import build_parser
    from deepsynth.cli.train import train_config

    request = {"optimizer": {"learning_rate": 1e-3, "weight_decay": 0.05}, "learning_rate": 2e-4,
               "warmup_steps": 1, "num_epochs": 2, "lora_rank": 4}
    job = idle.post("/api/jobs", json={"dataset_id": "sample", "preset": "balanced", **request})
    assert job.status_code == 201, job.text
    from_job = idle.get(f"/api/jobs/{job.json()['id']}").json()["config"]
    planned = idle.post("/api/trainer/plan", json={"dataset_id": "sample", "preset": "balanced", "recommend": False,
                                                   "overrides": request})
    assert planned.status_code == 200, planned.text
    args = build_parser().parse_args(["train", "--preset", "balanced", "--learning-rate", "2e-4", "--weight-decay",
                                      "0.05", "--warmup-steps", "1", "--epochs", "2", "--lora-rank", "4"])
    from_cli = train_config(args, flag_overrides(args))[0].to_dict()
    server_set = ("output_dir", "data_path", "eval_data_path")
    for config in (from_job, planned.json()["config"], from_cli):
        for name in server_set:
            config.pop(name, None)
    assert from_job == planned.json()["config"] == from_cli
    assert from_cli["optimizer"]["learning_rate"] == 2e-4 and from_cli["optimizer"]["warmup_ratio"] is None
    assert from_cli["preset"] == "balanced" and from_cli["lora_rank"] == 4
