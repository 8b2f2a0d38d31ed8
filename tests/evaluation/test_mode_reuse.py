"""eval and generate read pages in the resolution mode the adapter was trained in; another mode warns."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from deepsynth.cli import main
from deepsynth.evaluation.adapter_folder import evaluate_adapter, generate_from_adapter, load_adapted_model

TEXT = "Le conseil municipal se réunira mardi."


def _adapter(lora_weights: Path, tmp_path: Path, **settings) -> Path:
    """The adapter with the training_config.json a run with ``settings`` writes."""
    folder = tmp_path / "adapter"
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).write_bytes((lora_weights / name).read_bytes())
    (folder / "training_config.json").write_text(json.dumps({"max_new_tokens": 4, **settings}), encoding="utf-8")
    return folder


def _mode_warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.getMessage().startswith("image_mode")]


def test_generate_and_eval_reuse_the_training_mode(lora_weights, tmp_path, caplog):
    folder = _adapter(lora_weights, tmp_path, image_mode="base")  # not the embedded model's default (small)
    with caplog.at_level(logging.WARNING, logger="deepsynth"):
        adapted = load_adapted_model(folder)
        assert adapted.loaded.image_mode.name == "base"
        assert adapted.loaded.processor.image_processor.size.height == 512  # 256 queries on 8-px patches
        result = evaluate_adapter(folder, max_samples=1)
        assert result["image_mode"] == "base"
        generation = generate_from_adapter(folder, text=TEXT, image_mode="base")  # the same mode, said again
    assert not _mode_warnings(caplog)
    assert generation.stop_reason in ("eos", "max_new_tokens", "repetition_guard")
    # Each shown sample says how its generations ended.
    assert {"before_stop", "after_stop"} <= set(result["samples"][0])


def test_another_mode_than_trainings_warns_naming_both(lora_weights, tmp_path, caplog):
    folder = _adapter(lora_weights, tmp_path, image_mode="base")
    with caplog.at_level(logging.WARNING, logger="deepsynth"):
        result = evaluate_adapter(folder, max_samples=1, image_mode="small")
    assert result["image_mode"] == "small"
    (message,) = _mode_warnings(caplog)
    assert "reading pages in mode 'small' (one 384-px view)" in message
    assert "was trained in mode 'base' (one 512-px view)" in message


def test_a_folder_without_a_recorded_mode_was_trained_in_the_models_default(lora_weights, tmp_path, caplog):
    folder = _adapter(lora_weights, tmp_path)  # written before image_mode existed
    with caplog.at_level(logging.WARNING, logger="deepsynth"):
        assert load_adapted_model(folder, image_mode="small").loaded.image_mode.name == "small"
        assert not _mode_warnings(caplog)
        assert load_adapted_model(folder, image_mode="dynamic").loaded.image_mode.tile_size == 384
    assert "was trained in mode 'small'" in _mode_warnings(caplog)[0]


def test_the_cli_takes_the_override_and_refuses_a_mode_the_family_lacks(lora_weights, tmp_path, capsys, caplog):
    folder = _adapter(lora_weights, tmp_path, image_mode="small")
    with caplog.at_level(logging.WARNING, logger="deepsynth"):
        assert main(["eval", "--adapter", str(folder), "--max-eval-samples", "1", "--image-mode", "base"]) == 0
    out = capsys.readouterr().out
    assert "Before/after on 1 held-out samples" in out and "First 1 samples" in out
    assert "   adapted: " in out and "[" in out.split("adapted: ")[1]  # the stop report beside the text
    assert _mode_warnings(caplog)
    assert main(["generate", "--adapter", str(folder), "--text", TEXT, "--image-mode", "gundam"]) == 2
    assert "error: image_mode: got 'gundam', expected one of dynamic, base, small for DeepSeek-OCR-2" in \
        capsys.readouterr().err


def test_generate_reads_a_pdf_page_and_names_a_missing_one(lora_weights, tmp_path, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pdf_support import write_pdf

    folder = _adapter(lora_weights, tmp_path, image_mode="base")
    pdf = write_pdf(tmp_path / "rapport.pdf", ["Page un", "Page deux"])
    assert main(["generate", "--adapter", str(folder), "--image", f"{pdf}#page=2"]) == 0
    assert capsys.readouterr().err.strip().endswith("]")  # how the generation ended, as for an image
    assert main(["generate", "--adapter", str(folder), "--image", f"{pdf}#page=3"]) == 2
    err = capsys.readouterr().err
    assert f"error: generate: image: {pdf}, page 3: no such page (the PDF has 2 pages)" in err
    assert main(["generate", "--adapter", str(folder), "--image", str(pdf)]) == 2  # which of its 2 pages?
    assert f"has 2 pages and names none; give one page: {pdf}#page=N (N from 1 to 2)" in capsys.readouterr().err
