"""label, eval and generate take the adapter's task and instruction; eval scores the rows held out from training."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pdf_support import png_bytes  # noqa: E402

from deepsynth.cli import main  # noqa: E402
from deepsynth.evaluation.adapter_folder import evaluate_adapter, generate_from_adapter  # noqa: E402
from deepsynth.labeling import draft_labels  # noqa: E402


def _adapter(lora_weights: Path, tmp_path: Path, **settings) -> Path:
    """The adapter with the training_config.json a run with ``settings`` writes."""
    folder = tmp_path / "adapter"
    shutil.copytree(lora_weights, folder)
    (folder / "training_config.json").write_text(json.dumps(settings), encoding="utf-8")
    return folder


def test_label_prompts_a_transcription_adapter_as_generate_does(lora_weights, tmp_path):
    # What `deepsynth train --task transcribe` writes: no instruction of its own, the task's prompt.
    folder = _adapter(lora_weights, tmp_path, task="transcribe", instruction=None, max_new_tokens=6)
    page = tmp_path / "scan.png"
    page.write_bytes(png_bytes((300, 400)))
    out = tmp_path / "drafts.jsonl"
    draft_labels(page, out, adapter=folder, progress=False)
    (line,) = [json.loads(text) for text in out.read_text(encoding="utf-8").splitlines()]
    generated = generate_from_adapter(folder, image=page)
    assert line["summary"] == str(generated) and line["summary"]


def _documents(path: Path, splits: list[str | None]) -> list[dict]:
    rows = []
    for number, split in enumerate(splits, 1):
        row = {"text": f"Document {number} : la mairie ouvre le marché {number}.", "summary": f"Résumé {number}."}
        if split is not None:
            row["split"] = split
        rows.append(row)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return rows


def test_eval_on_a_file_with_a_split_column_scores_its_eval_rows_only(lora_weights, tmp_path):
    folder = _adapter(lora_weights, tmp_path, max_new_tokens=2)
    data = tmp_path / "documents.jsonl"
    rows = _documents(data, ["train", "eval", "train", "eval", "train"])
    metrics = evaluate_adapter(folder, data)
    assert metrics["num_eval_samples"] == 2 and not metrics["eval_on_training_data"]
    assert [sample["reference"] for sample in metrics["samples"]] == [rows[1]["summary"], rows[3]["summary"]]
    assert metrics["scored_rows"] == f"the 2 rows of {data} marked split 'eval'"


def test_eval_on_a_file_without_a_split_column_scores_every_row_and_says_so(lora_weights, tmp_path):
    folder = _adapter(lora_weights, tmp_path, max_new_tokens=2)
    data = tmp_path / "documents.jsonl"
    _documents(data, [None, None])
    metrics = evaluate_adapter(folder, data)
    assert metrics["num_eval_samples"] == 2 and metrics["scored_rows"] == f"all 2 rows of {data}"


def test_eval_refuses_a_file_whose_rows_are_all_marked_train(lora_weights, tmp_path, capsys):
    folder = _adapter(lora_weights, tmp_path, max_new_tokens=2)
    data = tmp_path / "documents.jsonl"
    _documents(data, ["train", "train"])
    assert main(["eval", "--adapter", str(folder), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(data) in err and "no rows marked 'eval'" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_eval_without_data_scores_the_rows_the_run_held_out(lora_weights, tmp_path, capsys):
    from deepsynth.data.splits import load_splits

    data = tmp_path / "documents.jsonl"
    _documents(data, [None] * 7)
    folder = _adapter(lora_weights, tmp_path, max_new_tokens=2, data_path=str(data), holdout_samples=2, seed=5)
    held_out = load_splits(str(data), holdout_samples=2, seed=5)  # what the trainer held out
    metrics = evaluate_adapter(folder)
    assert [sample["reference"] for sample in metrics["samples"]] == list(held_out.eval["summary"])
    rows = ", ".join(str(index + 1) for index in held_out.held_out_indices)
    assert metrics["scored_rows"] == f"the 2 rows of {data} held out from training (rows {rows}, drawn with seed 5)"
    assert main(["eval", "--adapter", str(folder)]) == 0
    assert f"Scored: the 2 rows of {data} held out from training" in capsys.readouterr().out


def test_eval_without_data_refuses_when_the_run_held_nothing_out(lora_weights, tmp_path, capsys):
    data = tmp_path / "documents.jsonl"
    _documents(data, [None] * 3)
    cases = {
        _adapter(lora_weights, tmp_path, data_path=str(data)): "held out no rows",
        tmp_path / "bare": "has no training_config.json",
    }
    shutil.copytree(lora_weights, tmp_path / "bare")
    for folder, message in cases.items():
        assert main(["eval", "--adapter", str(folder)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "--data" in err and "Traceback" not in err


def test_the_base_models_evaluation_shows_samples_done_out_of_total(lora_weights, tmp_path, capsys):
    folder = _adapter(lora_weights, tmp_path, max_new_tokens=2)
    data = tmp_path / "documents.jsonl"
    _documents(data, [None, None, None])
    evaluate_adapter(folder, data, progress=True)
    err = capsys.readouterr().err
    assert "scoring the base model" in err and "3/3" in err


def test_generate_and_eval_say_which_image_mode_they_read_the_pages_in(lora_weights, tmp_path, capsys):
    folder = _adapter(lora_weights, tmp_path, max_new_tokens=2, image_mode="small")
    assert main(["generate", "--adapter", str(folder), "--text", "Le marché ouvre samedi."]) == 0
    assert "image mode small (one 384-px view; the adapter's training mode)" in capsys.readouterr().err
    assert main(["generate", "--adapter", str(folder), "--text", "Un texte.", "--image-mode", "base", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["image_mode"] == (
        "base (one 512-px view, as asked; the adapter was trained in small)")
    data = tmp_path / "documents.jsonl"
    _documents(data, [None])
    assert main(["eval", "--adapter", str(folder), "--data", str(data)]) == 0
    assert "Pages read in image mode small (one 384-px view; the adapter's training mode)" in capsys.readouterr().out


def test_generate_names_the_page_to_give_for_a_multi_page_pdf(lora_weights, tmp_path, capsys):
    from pdf_support import write_pdf

    folder = _adapter(lora_weights, tmp_path, max_new_tokens=2)
    pdf = tmp_path / "rapport.pdf"
    write_pdf(pdf, ["Page un", "Page deux"])
    assert main(["generate", "--adapter", str(folder), "--image", str(pdf)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: generate: image {pdf} has 2 pages and names none; give one page: {pdf}#page=N "
                   "(N from 1 to 2)\n")


@pytest.mark.parametrize("command", [["train", "--dry-run"], ["eval", "--adapter", "ADAPTER"]])
def test_data_that_is_not_a_regular_file_is_not_called_missing(lora_weights, tmp_path, capsys, command):
    folder = _adapter(lora_weights, tmp_path, max_new_tokens=2)
    argv = [str(folder) if part == "ADAPTER" else part for part in command]
    assert main([*argv, "--data", "/dev/zero"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: /dev/zero: is not a regular file or a folder (a device, pipe or socket); expected a data "
                   "file or a folder of pages\n")


def test_label_does_not_call_a_device_missing(tmp_path, capsys):
    assert main(["label", "--data", "/dev/zero", "--out", str(tmp_path / "drafts.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "is not a regular file or a folder" in err and "not found" not in err and "Traceback" not in err
    assert not (tmp_path / "drafts.jsonl").exists()
