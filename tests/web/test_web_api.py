"""The web API without training processes: presets, recommendation, estimates, datasets, job
validation, artifacts, push, the OpenAPI document. Real training runs are in test_web_jobs.py; the
access token, Host/Origin checks and the model_name rule in test_web_auth.py."""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image
from web_support import ACCESS_TOKEN, AUTH, HUB_TOKEN, JSONL_ROWS, assert_error

from deepsynth.cli import main as cli_main
from deepsynth.training.config import OptimizerConfig, TrainerConfig
from deepsynth.training.lora_config import LORA_PRESETS, PRESET_DESCRIPTIONS, AdapterSettings, get_lora_preset
from deepsynth.training.targets import count_trainable_params
from deepsynth.web.app import create_app
from deepsynth.web.jobs.processes import train_command

V1 = "deepseek-ai/DeepSeek-OCR"
# Any URL but the SVG namespace name (an identifier, never fetched).
EXTERNAL_URL = re.compile(r"(https?:)?//(?!www\.w3\.org/2000/svg)[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)


def app_client(state_dir: Path, **options) -> TestClient:
    """A client of the app (without its lifespan) that sends the access token, as scripts do."""
    return TestClient(create_app(state_dir, access_token=ACCESS_TOKEN, **options), headers=AUTH)


@pytest.fixture
def idle(state_dir: Path) -> TestClient:
    """The app without its lifespan: the supervisor does not run, so jobs stay queued."""
    return app_client(state_dir)


def upload(client: TestClient, filename: str, content: bytes, name: str | None = None):
    data = {"name": name} if name is not None else None
    return client.post("/api/datasets", files={"file": (filename, content)}, data=data)


def png_bytes(color: str = "white") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            archive.writestr(info, target)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------- presets


def test_presets_lists_every_preset_with_its_settings_and_description(idle):
    presets = idle.get("/api/lora/presets").json()["presets"]
    assert [p["name"] for p in presets] == list(LORA_PRESETS)
    for preset in presets:
        assert preset["settings"] == LORA_PRESETS[preset["name"]].to_dict()
        assert preset["description"] == PRESET_DESCRIPTIONS[preset["name"]]
    names = {p["name"] for p in presets}
    assert {"tiny_data", "balanced", "router_focused", "high_capacity_moe", "standard", "qlora_4bit"} <= names


@pytest.mark.parametrize(("num_samples", "model"), [(3, None), (20, None), (60, V1)])
def test_recommended_equals_the_cli_json(idle, capsys, num_samples, model):
    body = {"num_samples": num_samples} | ({"model": model} if model else {})
    response = idle.post("/api/lora/presets/recommended", json=body)
    assert response.status_code == 200, response.text
    argv = ["recommend", "--num-samples", str(num_samples), "--json"] + (["--model", model] if model else [])
    assert cli_main(argv) == 0
    from_cli = json.loads(capsys.readouterr().out)
    assert response.json() == from_cli
    data = response.json()
    assert set(data["estimates"]) >= {"total_steps", "effective_updates", "estimated_time_minutes", "warmup_steps",
                                      "trainable_params"}
    assert {"preset_name", "lora_config", "training_config", "warnings"} <= set(data)


def test_recommended_without_eval_data_equals_the_cli_json(idle, capsys):
    body = {"num_samples": 12, "has_eval_data": False, "num_train_tokens": 1200}
    response = idle.post("/api/lora/presets/recommended", json=body)
    assert response.status_code == 200, response.text
    assert cli_main(["recommend", "--num-samples", "12", "--no-eval-data", "--train-tokens", "1200", "--json"]) == 0
    assert response.json() == json.loads(capsys.readouterr().out)
    data = response.json()
    assert data["evaluation"] == {"holdout_samples": 2, "train_samples": 10, "eval_on_training_data": False}
    assert data["estimates"]["train_tokens"] == 1000 and data["training_config"]["early_stopping_patience"] == 3


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"num_samples": 0}, 422, "num_samples"),
    ({"num_samples": -4}, 422, "num_samples"),
    ({"num_samples": "5"}, 422, "num_samples"),
    ({"num_samples": 5.5}, 422, "num_samples"),
    ({"num_samples": True}, 422, "num_samples"),
    ({"num_samples": None}, 422, "num_samples"),
    ({}, 422, "num_samples"),
    ({"num_samples": 5, "extra": 1}, 422, "extra"),
    ({"num_samples": 5, "model": "no-such-org/no-such-model"}, 404, "model"),  # well-formed, names no model
    ({"num_samples": 5, "model": "x" * 600}, 422, "model"),
    ({"num_samples": 5, "model": "x" * 300}, 400, "model"),  # not a Hub id, not a folder of the server
    ({"num_samples": 5, "model": 7}, 422, "model"),
    ({"num_samples": 5, "has_eval_data": "no"}, 422, "has_eval_data"),
    ({"num_samples": 5, "has_eval_data": None}, 422, "has_eval_data"),
    ({"num_samples": 5, "num_train_tokens": 0}, 422, "num_train_tokens"),
    ({"num_samples": 5, "num_train_tokens": 2.5}, 422, "num_train_tokens"),
])
def test_recommended_rejects_bad_input(idle, body, status, field):
    assert_error(idle.post("/api/lora/presets/recommended", json=body), status, field)


def test_malformed_json_and_wrong_body_types_are_4xx(idle):
    for path in ("/api/lora/presets/recommended", "/api/lora/estimate", "/api/jobs"):
        response = idle.post(path, content=b'{"num_samples": ', headers={"content-type": "application/json"})
        assert_error(response, 400, "JSON")
        assert idle.post(path, json=[1, 2]).status_code == 422
        assert idle.post(path, content=b"plain", headers={"content-type": "text/plain"}).status_code in (400, 422)


# --------------------------------------------------------------------------------------- estimates


def test_estimate_is_exact_for_custom_settings(idle):
    body = {"model": V1, "rank": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"],
            "modules_to_save": ["gate"], "include_routed_experts": True}
    response = idle.post("/api/lora/estimate", json=body)
    assert response.status_code == 200, response.text
    lora = AdapterSettings(rank=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"],
                      modules_to_save=["gate"], include_routed_experts=True)
    assert response.json() == json.loads(json.dumps(count_trainable_params(V1, lora).to_dict()))
    # Defaults come from the preset when one is named; the embedded model when none is.
    response = idle.post("/api/lora/estimate", json={"preset": "router_focused", "rank": 4})
    expected = get_lora_preset("router_focused")
    expected.rank = 4
    assert response.json()["trainable"] == count_trainable_params(None, expected).trainable


def test_the_estimate_takes_every_lora_field_of_the_form(idle):
    """The estimate request is the form's LoRA fields under their preset names: LoRA off is counted as
    the run trains it (every weight but the vision path), and a 4/8-bit base is accepted."""
    from deepsynth.models.families import family_names
    from deepsynth.models.resolver import resolve_config

    names = {info["lora_name"] for info in idle.get("/api/trainer/fields").json()["fields"] if info["lora_name"]}
    assert names == {f.name for f in fields(AdapterSettings)}
    on = idle.post("/api/lora/estimate", json={"rank": 4, "quantization": "4bit"})
    off = idle.post("/api/lora/estimate", json={"rank": 4, "enabled": False})
    assert on.status_code == 200 and off.status_code == 200, (on.text, off.text)
    resolved = resolve_config(None)
    frozen = family_names(resolved.family).frozen_prefixes
    unfrozen = sum(p.numel() for name, p in resolved.build_on_meta().named_parameters() if not name.startswith(frozen))
    assert off.json()["trainable"] == unfrozen > on.json()["trainable"]
    # The 4-bit base is estimated as `deepsynth inspect` shows it (what the loader holds in 4 bits).
    assert on.json()["quantization"]["method"] and off.json()["quantization"] is None
    assert_error(idle.post("/api/lora/estimate", json={"enabled": "no"}), 422, "enabled")


@pytest.mark.parametrize(("body", "field"), [
    ({"rank": 0}, "rank"),
    ({"rank": "8"}, "rank"),
    ({"alpha": -1}, "alpha"),
    ({"dropout": 1.5}, "dropout"),
    ({"target_modules": "q_proj"}, "target_modules"),
    ({"target_modules": ["no_such_layer"]}, "target_modules"),
    ({"bias": "sometimes"}, "bias"),
    ({"preset": "no_such_preset"}, "preset"),
    ({"rank": 8, "surprise": True}, "surprise"),
])
def test_estimate_rejects_bad_input(idle, body, field):
    assert_error(idle.post("/api/lora/estimate", json=body), 422, field)


# --------------------------------------------------------------------------------------- datasets


def test_bundled_sample_is_listed(idle):
    datasets = idle.get("/api/datasets").json()["datasets"]
    sample = next(d for d in datasets if d["id"] == "sample")
    assert sample["builtin"] and sample["rows"] == 66
    assert sample["splits"] == {"train": 54, "eval": 12} and sample["train_rows"] == 54


def test_upload_jsonl_csv_parquet_and_zip_with_images(idle, state_dir):
    response = upload(idle, "notes.jsonl", JSONL_ROWS, name="Mes notes")
    assert response.status_code == 201, response.text
    info = response.json()
    assert info["name"] == "Mes notes" and info["rows"] == 3 and info["filename"] == "notes.jsonl"
    assert (state_dir / "datasets" / info["id"] / "notes.jsonl").read_bytes() == JSONL_ROWS
    assert idle.get(f"/api/datasets/{info['id']}").json() == info

    csv = "text,summary,split\nUn texte.,Un résumé.,train\nDeux textes.,Deux résumés.,train\nTrois.,Trois!,eval\n"
    info = upload(idle, "table.csv", csv.encode()).json()
    assert info["rows"] == 3 and info["splits"] == {"train": 2, "eval": 1} and info["train_rows"] == 2

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": ["a b c", "d e f"], "summary": ["abc", "def"]}), buffer)
    assert upload(idle, "rows.parquet", buffer.getvalue()).json()["rows"] == 2

    data = b'{"image": "pages/p1.png", "summary": "Page une."}\n{"image": "pages/p2.png", "summary": "Page deux."}\n'
    archive = zip_bytes({"set/data.jsonl": data, "set/pages/p1.png": png_bytes(), "set/pages/p2.png": png_bytes("gray"),
                         "__MACOSX/set/._data.jsonl": b"junk"})
    response = upload(idle, "scans.zip", archive)
    assert response.status_code == 201, response.text
    info = response.json()
    assert info["rows"] == 2
    assert (state_dir / "datasets" / info["id"] / "set" / "pages" / "p2.png").is_file()

    listed = [d["id"] for d in idle.get("/api/datasets").json()["datasets"]]
    assert listed[0] == "sample" and len(listed) == 5


@pytest.mark.parametrize(("filename", "content", "words"), [
    ("bad.jsonl", b'{"text": "a", "summary": "b"}\n{"text": "only text"}\n', ("line 2", "summary")),
    ("bad.jsonl", b'{"text": "a", "summary": "b"}\nnot json\n', ("line 2", "JSON")),
    ("bad.csv", b"text,resume\nun,deux\n", ("summary",)),
    ("bad.csv", b"text,summary\nun,deux\ntrois,\n", ("row 3", "summary")),
    ("empty.jsonl", b"", ("no rows",)),
])
def test_upload_invalid_data_is_422_naming_row_and_column(idle, state_dir, filename, content, words):
    message = assert_error(upload(idle, filename, content), 422, filename, *words)
    assert str(state_dir) not in message
    assert [d["id"] for d in idle.get("/api/datasets").json()["datasets"]] == ["sample"]
    assert not [p for p in (state_dir / "datasets").iterdir()]


@pytest.mark.parametrize("filename", ["../../evil.jsonl", "..", "a/b.jsonl", "..\\evil.jsonl", "/etc/passwd.jsonl"])
def test_upload_refuses_path_traversal_in_file_names(idle, state_dir, filename):
    response = upload(idle, filename, JSONL_ROWS)
    assert response.status_code == 400, response.text
    assert not (state_dir / "evil.jsonl").exists() and not (state_dir.parent / "evil.jsonl").exists()


def test_upload_refuses_traversal_in_display_name_and_unsupported_types(idle):
    assert_error(upload(idle, "ok.jsonl", JSONL_ROWS, name="../../x"), 400, "name")
    assert_error(upload(idle, "notes.txt", JSONL_ROWS), 400, "filename", ".jsonl")
    assert_error(idle.post("/api/datasets", json={"file": "x"}), 400, "multipart")
    assert_error(idle.post("/api/datasets", data={"name": "no file"}, files={"other": ("a.jsonl", b"x")}), 400, "file")


@pytest.mark.parametrize(("members", "symlinks", "status", "words"), [
    ({"../evil.jsonl": JSONL_ROWS}, None, 400, ("outside",)),
    ({"/abs/evil.jsonl": JSONL_ROWS}, None, 400, ("outside",)),
    ({"data.jsonl": JSONL_ROWS, "img/../../evil.png": b"x"}, None, 400, ("outside",)),
    ({"data.jsonl": JSONL_ROWS}, {"link.png": "/etc/passwd"}, 400, ("symbolic link",)),
    ({"readme.md": b"hello"}, None, 422, ("no data file",)),
    ({"a.jsonl": JSONL_ROWS, "b.csv": b"text,summary\na,b\n"}, None, 422, ("several data files",)),
])
def test_zip_uploads_are_checked_member_by_member(idle, state_dir, members, symlinks, status, words):
    assert_error(upload(idle, "bundle.zip", zip_bytes(members, symlinks)), status, *words)
    assert not (state_dir / "evil.jsonl").exists() and not (state_dir / "datasets" / "evil.jsonl").exists()
    assert [d["id"] for d in idle.get("/api/datasets").json()["datasets"]] == ["sample"]


def test_zip_image_missing_is_422_naming_the_row(idle):
    data = b'{"image": "p1.png", "summary": "Une."}\n{"image": "missing.png", "summary": "Deux."}\n'
    assert_error(upload(idle, "scans.zip", zip_bytes({"d.jsonl": data, "p1.png": png_bytes()})), 422,
                 "line 2", "image", "not found")
    assert_error(upload(idle, "broken.zip", b"PK\x03\x04 not really"), 400, "zip")


def test_oversized_uploads_are_413(state_dir):
    app = app_client(state_dir, max_upload_bytes=2000)
    assert_error(upload(app, "big.jsonl", JSONL_ROWS * 200), 413, "limit")

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(200):
            yield b"x" * 1024

    response = app.post("/api/datasets", content=chunks(),
                        headers={"content-type": "multipart/form-data; boundary=zzz"})
    assert_error(response, 413, "limit")
    assert upload(app, "small.jsonl", JSONL_ROWS).status_code == 201
    # (a zip extracts only the files its rows name: here the bomb is named)
    bomb = zip_bytes({"d.jsonl": b'{"summary": "s", "image": "zeros.bin"}\n', "zeros.bin": b"\0" * 50_000})
    assert_error(upload(app, "bomb.zip", bomb), 413, "expands")
    assert_error(app.post("/api/jobs", content=b"{" + b" " * (2 * 2**20) + b"}",
                          headers={"content-type": "application/json"}), 413, "body")


def test_delete_dataset(idle, state_dir):
    info = upload(idle, "notes.jsonl", JSONL_ROWS).json()
    job = idle.post("/api/jobs", json={"dataset_id": info["id"]}).json()
    assert_error(idle.delete(f"/api/datasets/{info['id']}"), 409, job["id"])
    idle.post(f"/api/jobs/{job['id']}/cancel")
    assert idle.delete(f"/api/datasets/{info['id']}").json()["deleted"]["id"] == info["id"]
    assert not (state_dir / "datasets" / info["id"]).exists()
    assert_error(idle.get(f"/api/datasets/{info['id']}"), 404, info["id"])
    assert_error(idle.delete(f"/api/datasets/{info['id']}"), 404, info["id"])
    assert_error(idle.delete("/api/datasets/sample"), 409, "bundled")
    assert_error(idle.get("/api/datasets/UPPER.case"), 400, "dataset_id")
    response = idle.get("/api/datasets/..%2F..%2Fjobs")
    assert response.status_code in (400, 404) and "error" in response.json()


# --------------------------------------------------------------------------------------- jobs


def _non_default_request(dataset_id: str) -> dict:
    """A job request that sets every client field of TrainerConfig to a value other than its default."""
    values = {
        "model_name": V1, "preset": "router_focused",
        "batch_size": 2, "num_epochs": 3, "gradient_accumulation_steps": 4,
        "max_train_samples": 3, "max_eval_samples": 2,
        "use_lora": True, "lora_rank": 8, "lora_alpha": 12, "lora_dropout": 0.2,
        "lora_target_modules": ["q_proj", "v_proj", "down_proj", "gate"], "lora_modules_to_save": ["gate"],
        "lora_bias": "lora_only", "lora_include_routed_experts": True, "lora_quantization": "8bit",
        "gate_dropout_rate": 0.1, "gate_dropout_keywords": ["router"], "expert_dropout_rate": 0.05,
        "expert_dropout_min_keep": 2,
        "column_mapping": {"summary": "summary"}, "instruction": "Résume ce document.", "max_length": 256,
        "holdout_samples": 2,
        "seed": 7, "dtype": "float32", "gradient_checkpointing": True, "save_total_limit": 3,
        "checkpoint_every_updates": 2, "resume_from_checkpoint": "never", "eval_every_updates": 1,
        "early_stopping_patience": 2, "max_new_tokens": 12, "no_repeat_ngram_size": 4,
        "push_to_hub": True, "hub_model_id": "my-org/my-adapter", "hub_private": True,
        # optimizer fields, given flat
        "learning_rate": 3e-4, "weight_decay": 0.05, "warmup_steps": 2, "scheduler_type": "linear",
    }
    defaults = TrainerConfig().to_dict()
    request = {"dataset_id": dataset_id, "eval_dataset_id": "sample"}
    for f in fields(TrainerConfig):
        if f.name in ("output_dir", "data_path", "eval_data_path", "hub_token", "optimizer"):
            continue
        # A field added later is still sent (with its default) and must still arrive.
        request[f.name] = values.get(f.name, defaults[f.name])
    for f in fields(OptimizerConfig):
        if f.name in values:
            request[f.name] = values[f.name]
    return request


def test_every_field_sent_reaches_the_trainers_config_file(idle, state_dir):
    dataset = upload(idle, "notes.jsonl", JSONL_ROWS).json()
    request = _non_default_request(dataset["id"])
    response = idle.post("/api/jobs", json=request)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued" and job["dataset_id"] == dataset["id"]
    job_dir = state_dir / "jobs" / job["id"]
    saved = yaml.safe_load((job_dir / "config.yaml").read_text(encoding="utf-8"))
    optimizer_fields = {f.name for f in fields(OptimizerConfig)}
    for name, value in request.items():
        if name in ("dataset_id", "eval_dataset_id"):
            continue
        got = saved["optimizer"][name] if name in optimizer_fields else saved[name]
        assert got == value, (name, got, value)
    assert saved["optimizer"]["warmup_ratio"] is None
    # The server's own fields: the job folder and the datasets' files.
    assert saved["output_dir"] == str(job_dir / "output")
    assert saved["data_path"] == str(state_dir / "datasets" / dataset["id"] / "notes.jsonl")
    from deepsynth.data import SAMPLE_DATA_PATH

    assert saved["eval_data_path"] == str(SAMPLE_DATA_PATH)
    assert "hub_token" not in saved
    # That file is what the training process is told to load.
    command = train_command(job_dir / "config.yaml", Path(saved["data_path"]), Path(saved["eval_data_path"]),
                            Path(saved["output_dir"]))
    assert command[1:6] == ["-m", "deepsynth.cli", "train", "--config", str(job_dir / "config.yaml")]
    assert command[command.index("--data") + 1] == saved["data_path"]
    assert command[command.index("--eval-data") + 1] == saved["eval_data_path"]
    assert command[command.index("--output-dir") + 1] == saved["output_dir"]
    assert TrainerConfig.from_file(job_dir / "config.yaml").to_dict() == saved
    detail = idle.get(f"/api/jobs/{job['id']}").json()
    assert detail["config"] == saved and detail["loss_history"] == [] and detail["metrics"] is None


@pytest.mark.parametrize(("extra", "field", "status"), [
    ({"lora_rank": 0}, "lora_rank", 422),
    ({"batch_size": "2"}, "batch_size", 422),
    ({"num_epochs": 2.5}, "num_epochs", 422),
    ({"learning_rate": -1}, "learning_rate", 422),
    ({"scheduler_type": "bogus"}, "scheduler_type", 422),
    ({"preset": "nope"}, "preset", 422),
    ({"lora_target_modules": [""]}, "lora_target_modules", 422),
    ({"surprise_field": 1}, "surprise_field", 422),
    ({"output_dir": "/tmp/elsewhere"}, "output_dir", 422),
    ({"data_path": "/etc/passwd"}, "data_path", 422),
    ({"eval_data_path": "/etc/passwd"}, "eval_data_path", 422),
    ({"resume_from_checkpoint": "/some/other/run"}, "resume_from_checkpoint", 422),
    ({"push_to_hub": True}, "hub_model_id", 422),
    ({"early_stopping_patience": 2}, "eval_every_updates", 422),
    ({"warmup_steps": 2, "warmup_ratio": 0.1}, "warmup_steps", 422),
    ({"lora_target_modules": "q_proj"}, "lora_target_modules", 422),
    ({"lora_target_modules": 5}, "lora_target_modules", 422),
    ({"gate_dropout_keywords": 5}, "gate_dropout_keywords", 422),
    ({"column_mapping": ["summary"]}, "column_mapping", 422),
    ({"push_to_hub": "false"}, "push_to_hub", 422),
    ({"use_lora": 1}, "use_lora", 422),
    ({"model_name": 5}, "model_name", 422),
    ({"lora_bias": None}, "lora_bias", 422),
    ({"optimizer": 5}, "optimizer", 422),
    ({"optimizer": {"bogus": 1}}, "bogus", 422),
    ({"optimizer": {"learning_rate": "fast"}}, "learning_rate", 422),
    ({"dataset_id": "no-such-set"}, "dataset_id", 404),  # a well-formed id naming no dataset
    ({"dataset_id": 5}, "dataset_id", 422),
    ({"dataset_id": "../../etc"}, "dataset_id", 422),
    ({"eval_dataset_id": "no-such-set"}, "eval_dataset_id", 404),
])
def test_job_requests_are_validated_naming_the_field(idle, state_dir, extra, field, status):
    response = idle.post("/api/jobs", json={"dataset_id": "sample", **extra})
    assert_error(response, status, field)
    assert idle.get("/api/jobs").json()["jobs"] == []
    assert not list((state_dir / "jobs").iterdir())


def test_hub_token_is_never_accepted_from_a_client(idle):
    message = assert_error(idle.post("/api/jobs", json={"dataset_id": "sample", "hub_token": HUB_TOKEN}), 422, "hub_token")
    assert HUB_TOKEN not in message
    assert_error(idle.post("/api/jobs", json={"dataset_id": "sample"} | {"hub_token": None}), 422, "hub_token")


def test_missing_dataset_id(idle):
    assert_error(idle.post("/api/jobs", json={"lora_rank": 8}), 422, "dataset_id")


def test_unknown_job_is_404_on_every_route(idle):
    for method, path in (("get", "/api/jobs/nope"), ("post", "/api/jobs/nope/cancel"),
                         ("get", "/api/jobs/nope/events"), ("get", "/api/jobs/nope/artifacts")):
        assert_error(getattr(idle, method)(path), 404, "nope")
    assert_error(idle.post("/api/jobs/nope/push", json={"repo_id": "org/name"}), 404, "nope")
    assert_error(idle.get("/api/nothing-here"), 404)


def test_cancel_queued_job_and_conflicts(idle):
    job = idle.post("/api/jobs", json={"dataset_id": "sample"}).json()
    assert idle.post(f"/api/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    assert_error(idle.post(f"/api/jobs/{job['id']}/cancel"), 409, "already cancelled")
    assert_error(idle.get(f"/api/jobs/{job['id']}/artifacts"), 409, "no adapter")
    listed = idle.get("/api/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]] and listed[0]["status"] == "cancelled"


def _finished_job(client: TestClient, state_dir: Path) -> tuple[str, Path]:
    """A job made to look succeeded, with an adapter folder like the trainer writes."""
    job = client.post("/api/jobs", json={"dataset_id": "sample"}).json()
    jobs = client.app.state.jobs
    output = state_dir / "jobs" / job["id"] / "output"
    (output / "checkpoint-2").mkdir(parents=True)
    (output / "adapter_config.json").write_text('{"r": 8}')
    (output / "adapter_model.safetensors").write_bytes(b"weights")
    (output / "training_args.bin").write_bytes(b"pickled")
    (output / "checkpoint-2" / "optimizer.pt").write_bytes(b"state")
    (output / "checkpoint-2" / "adapter_config.json").write_text('{"r": 8}')
    (output / "metrics.json").write_text(json.dumps({
        "eval": {"before": {"loss": 2.0, "rougeL": 0.1}, "after": {"loss": 1.0, "rougeL": 0.3}},
        "optimizer_updates": 2, "trainable_params": {"total": 10, "by_group": {"attention": 10}},
        "expert_utilization": {"layers": {"layer.1": [5, 3, 0, 2]}, "summary": {"max_share": 0.5}},
    }))
    (output / "progress.jsonl").write_text(
        '{"event": "start", "total_updates": 2, "total_steps": 2, "num_train_samples": 2}\n'
        '{"event": "phase", "name": "training"}\n'
        '{"event": "log", "step": 1, "epoch": 0.5, "loss": 3.5, "learning_rate": 0.0001}\n'
        '{"event": "eval", "step": 1, "eval_loss": 3.6}\n'
        '{"event": "log", "step": 2, "epoch": 1.0, "loss": 3.0, "learning_rate": 0.00005}\n'
        '{"event": "done", "metrics_path": "metrics.json"}\n'
    )
    with jobs._lock:
        jobs._refresh_progress(job["id"])
        jobs.store.update(job["id"], status="running")
        jobs._finish(job["id"], exit_code=0)
    return job["id"], output


def test_job_detail_artifacts_and_events_of_a_finished_job(idle, state_dir):
    job_id, output = _finished_job(idle, state_dir)
    detail = idle.get(f"/api/jobs/{job_id}").json()
    assert detail["status"] == "succeeded" and detail["step"] == 2 and detail["total_updates"] == 2
    assert detail["loss_history"] == [{"step": 1, "epoch": 0.5, "loss": 3.5, "learning_rate": 0.0001},
                                      {"step": 2, "epoch": 1.0, "loss": 3.0, "learning_rate": 0.00005}]
    assert detail["eval_history"] == [{"step": 1, "eval_loss": 3.6}]
    assert detail["metrics"]["eval"]["after"]["loss"] == 1.0
    assert detail["expert_utilization"]["layers"] == {"layer.1": [5, 3, 0, 2]}
    assert detail["has_adapter"]

    response = idle.get(f"/api/jobs/{job_id}/artifacts")
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    names = set(zipfile.ZipFile(io.BytesIO(response.content)).namelist())
    assert {"adapter_config.json", "adapter_model.safetensors", "metrics.json"} <= names
    assert not any(n.startswith("checkpoint-") or n == "training_args.bin" for n in names)
    assert not list((state_dir / "tmp").iterdir())  # the zip is removed once sent

    with idle.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        text = "".join(stream.iter_text())
    events = _parse_sse(text)
    progress = [data for kind, data, _ in events if kind == "progress"]
    assert [e["event"] for e in progress] == ["start", "phase", "log", "eval", "log", "done"]
    assert [kind for kind, _, _ in events][-1] == "end" and events[-1][1]["status"] == "succeeded"
    # Reconnection: Last-Event-ID skips what the client already has.
    with idle.stream("GET", f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": "4"}) as stream:
        again = _parse_sse("".join(stream.iter_text()))
    assert [(d["event"], i) for k, d, i in again if k == "progress"] == [("log", "5"), ("done", "6")]


def _parse_sse(text: str) -> list[tuple[str, dict, str | None]]:
    events = []
    for block in text.split("\n\n"):
        kind, data, event_id = None, None, None
        for line in block.splitlines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif line.startswith("id: "):
                event_id = line[4:]
        if kind:
            events.append((kind, data, event_id))
    return events


def test_push_uses_the_library_with_the_servers_token_only(idle, state_dir, monkeypatch):
    import deepsynth.publishing as publishing
    from deepsynth.publishing import PushError, PushReport

    job_id, output = _finished_job(idle, state_dir)
    calls = []

    def fake_push(adapter_dir, repo_id, *, private=False, token=None, **kwargs):
        calls.append((Path(adapter_dir), repo_id, private, token, kwargs))
        if repo_id == "org/fails":
            raise PushError("upload failed: 403 no write permission", PushReport(repo_id=repo_id, backend="http",
                                                                              error="403"))
        return PushReport(repo_id=repo_id, backend="http", uploaded=["adapter_config.json"],
                          commit_url="https://hub.example/commit/1")

    monkeypatch.setattr(publishing, "push_adapter", fake_push)
    response = idle.post(f"/api/jobs/{job_id}/push", json={"repo_id": "org/name", "private": True})
    assert response.status_code == 200, response.text
    assert response.json()["uploaded"] == ["adapter_config.json"] and response.json()["ok"]
    assert calls == [(output, "org/name", True, None, {})]  # the library resolves HF_TOKEN itself
    assert_error(idle.post(f"/api/jobs/{job_id}/push", json={"repo_id": "org/fails"}), 502, "403")
    assert_error(idle.post(f"/api/jobs/{job_id}/push", json={"repo_id": "not a repo"}), 422, "repo_id")
    assert_error(idle.post(f"/api/jobs/{job_id}/push", json={"repo_id": "org/name", "token": "x"}), 422, "token")
    assert_error(idle.post(f"/api/jobs/{job_id}/push", json={"repo_id": "org/name", "private": "yes"}), 422, "private")
    queued = idle.post("/api/jobs", json={"dataset_id": "sample"}).json()
    assert_error(idle.post(f"/api/jobs/{queued['id']}/push", json={"repo_id": "org/name"}), 409, "queued")
    assert len(calls) == 2


def test_hub_status_never_returns_the_token(idle, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    response = idle.get("/api/hub")
    assert response.json() == {"token_available": True, "source": "environment"}
    assert HUB_TOKEN not in response.text
    for path in ("/api/trainer/defaults", "/openapi.json", "/api/health", "/"):
        assert HUB_TOKEN not in idle.get(path).text


def test_defaults_and_openapi(idle):
    defaults = idle.get("/api/trainer/defaults").json()
    expected = TrainerConfig().to_dict()
    for name in ("output_dir", "data_path", "eval_data_path"):
        expected.pop(name)
    assert defaults["defaults"] == expected
    schema = idle.get("/openapi.json").json()
    paths = set(schema["paths"])
    assert {"/api/lora/presets", "/api/lora/presets/recommended", "/api/lora/estimate", "/api/datasets",
            "/api/datasets/{dataset_id}", "/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/events",
            "/api/jobs/{job_id}/cancel", "/api/jobs/{job_id}/artifacts", "/api/jobs/{job_id}/push"} <= paths
    job_schema = schema["components"]["schemas"]["JobRequest"]["properties"]
    assert {"dataset_id", "lora_rank", "learning_rate", "lora_include_routed_experts"} <= set(job_schema)
    assert "hub_token" not in job_schema


def test_ui_page_and_assets_are_local(idle):
    page = idle.get("/")
    assert page.status_code == 200
    for element in ("preset-select", "apply-preset", "dataset-select", "dataset-file", "fields-lora",
                    "trainable-params", "start-job", "loss-chart", "expert-chart", "metrics-table", "jobs-table"):
        assert f'id="{element}"' in page.text
    for asset in ("/static/app.js", "/static/style.css", "/static/login.js"):
        response = idle.get(asset)
        assert response.status_code == 200
        assert not EXTERNAL_URL.search(response.text), EXTERNAL_URL.search(response.text)
    assert not EXTERNAL_URL.search(page.text)
    assert "alert(" not in idle.get("/static/app.js").text


def test_openapi_declares_the_errors_each_route_gives(idle):
    schema = idle.get("/openapi.json").json()
    declared = {(method.upper(), path): set(op["responses"])
                for path, ops in schema["paths"].items() for method, op in ops.items()}
    every = {"401", "403", "413"}  # no token; a foreign Host or Origin; a body over the limit
    assert declared[("POST", "/api/jobs")] == every | {"201", "400", "404", "422", "507"}  # 404: no such dataset
    assert declared[("POST", "/api/datasets")] == every | {"201", "400", "422", "507"}  # 507: a full disk
    assert declared[("DELETE", "/api/datasets/{dataset_id}")] == every | {"200", "400", "404", "409"}
    assert declared[("GET", "/api/jobs/{job_id}/artifacts")] == every | {"200", "404", "409", "507"}
    assert declared[("POST", "/api/jobs/{job_id}/push")] == every | {"200", "400", "404", "409", "422", "502"}
    assert declared[("GET", "/api/jobs")] == every | {"200"}
    # Errors have our shape ({"error": ...}), not FastAPI's stock {"detail": ...}.
    push = schema["paths"]["/api/jobs/{job_id}/push"]["post"]["responses"]
    for code in ("400", "404", "409", "422", "502"):
        assert push[code]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert "HTTPValidationError" not in json.dumps(schema)
    assert "text/event-stream" in schema["paths"]["/api/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert all(op["security"] == [{"bearer": []}] for ops in schema["paths"].values() for op in ops.values())


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("PUT", "/api/jobs", "GET, POST"),
    ("DELETE", "/api/jobs/abc", "GET"),
    ("GET", "/api/jobs/abc/cancel", "POST"),
    ("PATCH", "/api/datasets/sample", "DELETE, GET"),
    ("POST", "/static/app.js", "GET, HEAD"),
])
def test_405_answers_list_the_allowed_methods(idle, method, path, allowed):
    response = idle.request(method, path)
    assert_error(response, 405, method, allowed)
    assert response.headers["allow"] == allowed
    for other in allowed.split(", "):  # and each method it lists is served there
        assert idle.request(other, path, json={} if other == "POST" else None).status_code != 405
