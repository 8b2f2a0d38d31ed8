"""An adapter folder read back as its run's settings: current, older and bare folders; bad folders are one clear error."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import fields
from pathlib import Path

import pytest

from deepsynth.cli import main
from deepsynth.evaluation.adapter_folder import (
    AdapterFolderError,
    evaluate_adapter,
    generate_from_adapter,
    load_adapted_model,
    read_adapter_settings,
)
from deepsynth.evaluation.run_settings import RunSettings
from deepsynth.training.config import TrainerConfig

# training_config.json as the first DeepSynth version that trained (commit 3db2a6a) wrote it: it has
# no router_aux_loss_coef, use_feature_cache or holdout_samples (added later).
OLD_TRAINING_CONFIG = Path(__file__).parent / "data" / "training_config_3db2a6a.json"


@pytest.fixture(scope="module")
def bare_adapter(lora_weights) -> Path:
    """A PEFT adapter on the embedded base (LoRA B not zero, so it changes the outputs); no training_config.json
    (conftest's, one per module)."""
    return lora_weights


def _folder_with(bare_adapter: Path, tmp_path: Path, training_config: str | None) -> Path:
    folder = tmp_path / "adapter"
    shutil.copytree(bare_adapter, folder)
    if training_config is not None:
        (folder / "training_config.json").write_text(training_config, encoding="utf-8")
    return folder


RUN_SETTINGS = [f.name for f in fields(RunSettings)]


def _as_read_back(config: TrainerConfig) -> dict:
    return {name: getattr(config, name) for name in RUN_SETTINGS}


def test_the_settings_a_run_saves_come_back_as_its_config(bare_adapter, tmp_path, caplog):
    config = TrainerConfig(instruction="Free OCR.", max_length=300, max_new_tokens=5, no_repeat_ngram_size=3,
                           column_mapping={"summary": "résumé"}, router_aux_loss_coef=0.01, preset="tiny_data",
                           task="transcribe", image_mode="small", seed=7, holdout_samples=2, metric_ignore_case=True)
    folder = _folder_with(bare_adapter, tmp_path, None)
    config.save(folder / "training_config.json")  # what the trainer writes
    with caplog.at_level(logging.WARNING, logger="deepsynth"):
        settings = read_adapter_settings(folder)
    assert _as_read_back(settings) == _as_read_back(config)
    assert not caplog.records


def test_a_setting_the_file_lacks_takes_the_trainers_default():
    # Reading back needs no training import, so the defaults are written twice: this keeps them equal.
    assert _as_read_back(RunSettings()) == _as_read_back(TrainerConfig())


def test_a_folder_written_by_an_older_version_still_loads(bare_adapter, tmp_path):
    old = json.loads(OLD_TRAINING_CONFIG.read_text(encoding="utf-8"))
    assert not {"router_aux_loss_coef", "use_feature_cache", "holdout_samples"} & set(old)
    # Settings a later version might drop: left aside, as the training-only ones are.
    old["retired_setting"] = True
    old["optimizer"]["retired_knob"] = 1
    folder = _folder_with(bare_adapter, tmp_path, json.dumps(old))
    settings = read_adapter_settings(folder)
    assert settings.holdout_samples == TrainerConfig().holdout_samples  # lacking: the trainer's default
    assert (settings.instruction, settings.max_length, settings.max_new_tokens) == ("Free OCR.", 300, 4)
    # And it is used: before/after on one bundled sample with the old folder's settings.
    metrics = evaluate_adapter(folder, max_samples=1)
    assert metrics["num_eval_samples"] == 1
    assert metrics["eval"]["before"]["loss"] != metrics["eval"]["after"]["loss"]


def test_a_bare_peft_adapter_takes_every_default(bare_adapter, caplog):
    with caplog.at_level(logging.WARNING, logger="deepsynth"):
        assert read_adapter_settings(bare_adapter) == RunSettings()
    assert "has no training_config.json" in caplog.text
    adapted = load_adapted_model(bare_adapter)
    assert adapted.settings == RunSettings() and adapted.loaded.is_multimodal
    assert isinstance(generate_from_adapter(bare_adapter, text="Le marché ouvre samedi.", max_new_tokens=2), str)


def test_evaluation_encodes_with_the_folder_max_length(bare_adapter, tmp_path):
    # The saved max_length (not a default typed again) decides; 64 leaves no room after the page.
    folder = _folder_with(bare_adapter, tmp_path, json.dumps({"max_length": 64}))
    with pytest.raises(ValueError, match="sample 1: max_length=64 leaves no room"):
        evaluate_adapter(folder, max_samples=1)


BAD_SETTINGS = {
    "not JSON": ("{max_length: 5", "training_config.json is not valid JSON"),
    "not an object": ("[1, 2]", "training_config.json holds a JSON list, expected an object"),
    "wrong kind": ('{"max_length": "300"}', "training_config.json: max_length: got '300', expected an integer or null"),
    "a flag as a number": ('{"metric_ignore_case": 1}', "metric_ignore_case: got 1, expected true or false"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_an_unreadable_settings_file_is_one_error_naming_it(bare_adapter, tmp_path, case):
    text, message = BAD_SETTINGS[case]
    folder = _folder_with(bare_adapter, tmp_path, text)
    with pytest.raises(AdapterFolderError, match=message):
        read_adapter_settings(folder)


@pytest.mark.parametrize("command", [["eval"], ["generate", "--text", "Un texte."], ["export", "--merge", "merged"]])
def test_the_cli_refuses_a_folder_that_is_not_an_adapter_with_exit_2(bare_adapter, tmp_path, capsys, command):
    cases = {
        tmp_path / "missing": "is not a folder",
        tmp_path / "empty": "has no adapter_config.json",
        _folder_with(bare_adapter, tmp_path, '{"max_length": "long"}'): "max_length",
    }
    (tmp_path / "empty").mkdir()
    for folder, message in cases.items():
        argv = [command[0], "--adapter", str(folder), *command[1:]]
        if command[0] == "export":
            argv[-1] = str(tmp_path / "merged")
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: adapter: ") and str(folder) in err and message in err
        assert "Traceback" not in err
    assert not (tmp_path / "merged").exists()


def test_generate_refuses_an_unreadable_page_image_with_exit_2(bare_adapter, tmp_path, capsys):
    (tmp_path / "page.png").write_text("not an image", encoding="utf-8")
    for image in (tmp_path / "missing.png", tmp_path / "page.png"):
        assert main(["generate", "--adapter", str(bare_adapter), "--image", str(image)]) == 2
        err = capsys.readouterr().err
        assert f"error: generate: image {image}: not a readable image file" in err and "Traceback" not in err
