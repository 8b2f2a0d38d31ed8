"""The OpenAPI document says what the server accepts and answers (issue 21, item 15): the bounds of the
job fields are TrainerConfig's own, the requests the server refuses are schema-invalid, and a full
disk's 507 is declared where it can happen. (The fuzz test checks the same with schemathesis' ST202.)"""

from __future__ import annotations

import jsonschema_rs  # schemathesis' own validator
import pytest
from web_support import assert_error

from deepsynth.training.config import TrainerConfig
from deepsynth.training.errors import ConfigError
from deepsynth.web.fields import FIELD_RULES


def _request_schema(schema: dict, path: str) -> dict:
    body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return {**body, "components": schema["components"]}


def _valid(schema: dict, path: str, body: dict) -> bool:
    return jsonschema_rs.Draft202012Validator(_request_schema(schema, path)).is_valid(body)


def _accepted(name: str, value) -> bool:
    needs = {"early_stopping_patience": {"eval_every_updates": 1}}.get(name, {})  # a cross-field rule of its own
    try:
        TrainerConfig.from_dict({name: value, **needs})
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(FIELD_RULES))
def test_each_bound_of_the_schema_is_the_one_trainer_config_enforces(name):
    rules = FIELD_RULES[name]
    if "minimum" in rules and "exclusiveMaximum" in rules:  # [0, 1)
        assert _accepted(name, 0.0) and _accepted(name, 0.99)
        assert not _accepted(name, 1.0) and not _accepted(name, -0.01)
    elif "minimum" in rules:
        low = rules["minimum"]
        assert _accepted(name, low) and not _accepted(name, low - 1), name
    elif "exclusiveMinimum" in rules:
        assert _accepted(name, 1e-6) and not _accepted(name, 0), name


# The schema-valid requests the server used to reject (schemathesis ST202, issue 21), and more alike.
REFUSED = [
    ("/api/lora/presets/recommended", {"num_samples": 12, "model": ""}),
    ("/api/lora/presets/recommended", {"num_samples": 0}),
    ("/api/lora/estimate", {"model": "", "rank": 8}),
    ("/api/lora/estimate", {"rank": 0}),
    ("/api/lora/estimate", {"alpha": 0}),
    ("/api/trainer/plan", {"dataset_id": "sample", "model": ""}),
    ("/api/trainer/plan", {"dataset_id": "sample", "overrides": {"learning_rate": 0}}),
    ("/api/jobs", {"dataset_id": "sample", "learning_rate": 0}),
    ("/api/jobs", {"dataset_id": "sample", "batch_size": 0}),
    ("/api/jobs", {"dataset_id": "sample", "task": ""}),
    ("/api/jobs", {"dataset_id": "sample", "early_stopping_patience": 2}),
    ("/api/jobs", {"dataset_id": "sample", "push_to_hub": True}),
    ("/api/jobs/{job_id}/push", {"repo_id": "not a repo"}),
    ("/api/jobs/{job_id}/push", {"repo_id": "org//name"}),
    ("/api/jobs/{job_id}/push", {"repo_id": "org/name.git"}),
]


def test_requests_the_server_refuses_are_invalid_by_the_schema(client):
    schema = client.get("/openapi.json").json()
    for path, body in REFUSED:
        assert not _valid(schema, path, body), (path, body)
        if "{job_id}" not in path:
            assert client.post(path, json=body).status_code in (400, 422), (path, body)
    # And what it accepts is valid by it.
    assert _valid(schema, "/api/jobs/{job_id}/push", {"repo_id": "my-org/deepsynth-ocr-2.5"})
    assert _valid(schema, "/api/jobs", {"dataset_id": "sample", "learning_rate": 1e-4, "eval_every_updates": 2,
                                        "early_stopping_patience": 2, "model_name": "deepsynth/tiny-ocr2"})


def test_the_recommendation_bound_is_recommends_own():
    from deepsynth.training import recommend
    from deepsynth.web.routes.lora import MAX_SAMPLES, RecommendRequest

    assert MAX_SAMPLES == recommend.MAX_SAMPLES
    assert RecommendRequest.model_json_schema()["properties"]["num_samples"]["maximum"] == MAX_SAMPLES


def test_a_dataset_or_model_that_does_not_exist_is_404_not_422(client):
    assert_error(client.post("/api/jobs", json={"dataset_id": "no-such-set"}), 404, "no-such-set")
    assert_error(client.post("/api/trainer/plan", json={"dataset_id": "no-such-set"}), 404, "no-such-set")
    assert_error(client.post("/api/lora/presets/recommended", json={"num_samples": 4, "model": "nobody/nothing"}),
                 404, "nobody/nothing")


def test_the_507_of_a_full_disk_is_documented_where_it_can_happen(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path, method in (("/api/datasets", "post"), ("/api/jobs", "post"), ("/api/jobs/{job_id}/resume", "post"),
                         ("/api/jobs/{job_id}/artifacts", "get")):
        assert "507" in paths[path][method]["responses"], (path, method)
