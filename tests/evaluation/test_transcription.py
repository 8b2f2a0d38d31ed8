"""Transcription as a task: CER/WER with the normalisation written down, and `deepsynth train --task transcribe`."""

from __future__ import annotations

import json
import unicodedata

import pytest

from deepsynth.cli import main
from deepsynth.data.collate import OCR_INSTRUCTION, task_instruction
from deepsynth.evaluation.metrics import normalise_text, task_metrics, transcription_metrics


def test_normalisation_is_nfc_and_collapsed_whitespace_with_case_and_punctuation_kept():
    decomposed = unicodedata.normalize("NFD", "Été à Noël")
    assert decomposed != "Été à Noël"
    assert normalise_text(f"  {decomposed}\n\n  fini. ") == "Été à Noël fini."
    assert normalise_text("Été, à NOËL !", ignore_case=True) == "été, à noël !"
    assert normalise_text("fin.Début, « ici »", ignore_punctuation=True) == "fin Début ici"


def test_cer_and_wer_of_transcriptions():
    # "chat" → "chien": 2 substitutions + 1 insertion over 12 characters; 1 substituted word of 3.
    scores = transcription_metrics(["le chien dort"], ["le chat dort"])
    assert scores["wer"] == pytest.approx(1 / 3)
    assert scores["cer"] == pytest.approx(3 / 12)
    # Line breaks and doubled spaces are layout, not errors; a decomposed accent is the same letter.
    layout = transcription_metrics([unicodedata.normalize("NFD", "Le  pont\nferme.")], ["Le pont ferme."])
    assert (layout["cer"], layout["wer"]) == (0.0, 0.0)
    # Case and punctuation count unless ignored.
    assert transcription_metrics(["LE PONT FERME"], ["Le pont ferme."])["wer"] == 1.0
    relaxed = transcription_metrics(["LE PONT FERME"], ["Le pont ferme."], ignore_case=True, ignore_punctuation=True)
    assert (relaxed["cer"], relaxed["wer"]) == (0.0, 0.0)
    # A loop cannot push a sample past 1, and is counted beside it.
    looping = transcription_metrics(["le le le le le le le le le"], ["le"])
    assert looping["wer"] == 1.0 and looping["loop_rate"] == 1.0
    assert set(task_metrics("summarise", ["a"], ["a"])) == {"rouge1", "rouge2", "rougeL", "cer", "loop_rate"}


def test_the_transcribe_task_defaults_to_the_ocr_prompt():
    assert task_instruction("transcribe") == OCR_INSTRUCTION == "Free OCR."
    assert task_instruction("summarise") == "Résume ce document."
    assert task_instruction("transcribe", "Convert the document to markdown.") == "Convert the document to markdown."


def test_train_transcribe_on_the_bundled_pages_prints_cer_and_wer_before_and_after(tmp_path, capsys):
    out_dir = tmp_path / "run"
    argv = ["train", "--task", "transcribe", "--preset", "tiny_data", "--epochs", "1", "--max-train-samples", "2",
            "--max-eval-samples", "1", "--batch-size", "1", "--grad-accum", "1", "--max-new-tokens", "6",
            "--output-dir", str(out_dir)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "from the bundled French pages to transcribe" in out
    assert "task: transcribe (prompt 'Free OCR.'" in out
    assert "pages: image mode small (the model's default); vision tokens 145 per page" in out
    table = out.split("Before/after on 1 held-out samples:")[1]
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[3:7]}
    assert list(rows) == ["loss", "cer", "wer", "loop_rate"]
    assert "CER and WER on normalised text: Unicode NFC, whitespace collapsed, case and punctuation kept" in table

    metrics = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["task"] == "transcribe" and set(metrics["eval"]["before"]) == {"loss", "cer", "wer", "loop_rate"}
    assert metrics["image_mode"]["mode"] == "small" and metrics["image_mode"]["global_tokens"] == 145
    longest = metrics["max_length"]["longest_example"]
    assert metrics["max_length"]["set"] is None and longest["vision"] == 145 and longest["target"] > 100
    sample = metrics["samples"][0]
    assert sample["reference"].startswith("Madame, Monsieur,\n\nPar la présente")  # the page's text, as drawn
    assert sample["before_stop"].startswith("stopped at max_new_tokens (6 tokens)")
    saved = json.loads((out_dir / "training_config.json").read_text(encoding="utf-8"))
    # The mode the pages were read in is recorded, so eval and generate read them the same way.
    assert (saved["task"], saved["image_mode"], saved["max_length"]) == ("transcribe", "small", None)


def test_a_text_model_cannot_transcribe(capsys):
    assert main(["train", "--dry-run", "--task", "transcribe", "--model", "HuggingFaceTB/SmolLM2-135M",
                 "--data", "tests/does-not-matter.jsonl"]) == 2
    assert "error: task: got 'transcribe', expected summarise for a text causal LM" in capsys.readouterr().err
