"""`deepsynth label`: draft targets for unlabelled pages with the embedded model; batched, resumable, checked first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pdf_support import png_bytes, write_pdf  # noqa: E402

from deepsynth.cli import main  # noqa: E402
from deepsynth.data import load_documents  # noqa: E402
from deepsynth.labeling import draft_labels  # noqa: E402

OCR = ["--instruction", "Free OCR.", "--max-new-tokens", "3"]  # the embedded base's own task: it writes text


def _pages(root: Path, pdf_pages: int = 2) -> Path:
    folder = root / "scans"
    folder.mkdir()
    write_pdf(folder / "rapport.pdf", [f"Rapport, page {n}" for n in range(1, pdf_pages + 1)])
    (folder / "scan10.png").write_bytes(png_bytes((300, 400)))
    (folder / "scan2.png").write_bytes(png_bytes((400, 300), "lightgrey"))
    (folder / "notes.txt").write_text("not a page")
    return folder


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_label_drafts_every_page_into_a_targets_file_train_reads(tmp_path, capsys):
    folder = _pages(tmp_path)
    out = folder / "targets.jsonl"
    assert main(["label", "--data", str(folder), "--out", str(out), "--batch-size", "2", *OCR]) == 0
    lines = _lines(out)
    # Every page once, in natural order (scan2 before scan10), named relative to the drafts file.
    assert [line["image"] for line in lines] == ["rapport.pdf#page=1", "rapport.pdf#page=2", "scan2.png", "scan10.png"]
    assert all(isinstance(line["summary"], str) and line["summary"] for line in lines)
    printed = capsys.readouterr().out
    assert "4 of 4 pages drafted" in printed and f"deepsynth train --data {out}" in printed
    # Three tokens are not a page's text: every draft is listed as cut, with how its generation ended.
    assert ("warning: 4 drafts stopped at --max-new-tokens: rapport.pdf#page=1 [stopped at max_new_tokens (3 tokens): "
            "the text may go on; raise --max-new-tokens]; rapport.pdf#page=2 [") in printed
    # The drafts are the folder's targets file: train reads it as it is, re-reading each page.
    rows = load_documents(folder)
    assert rows["summary"] == [line["summary"] for line in lines]
    assert [max(image.size) for image in rows["image"]] == [1024, 1024, 400, 400]


def test_batched_drafts_equal_drafts_made_one_page_at_a_time(tmp_path, capsys):
    folder = _pages(tmp_path, pdf_pages=1)
    options = dict(instruction="Free OCR.", max_new_tokens=4)
    batched = draft_labels(folder, tmp_path / "batched.jsonl", batch_size=3, progress=True, **options)
    assert "3/3" in capsys.readouterr().err  # the progress bar, in pages
    single = draft_labels(folder, tmp_path / "single.jsonl", batch_size=1, progress=False, **options)
    assert batched.drafted == single.drafted == 3
    assert _lines(tmp_path / "batched.jsonl") == _lines(tmp_path / "single.jsonl")


def _drafter_preferring(preferences: dict[int, float], guard: int, max_new_tokens: int = 6):
    """The embedded base whose next-token logits are ``preferences`` (others -10) whatever the page: its last
    norm zeroed and its lm_head a biased linear layer, so a test decides exactly what it generates."""
    from deepsynth.labeling import _Drafter
    from deepsynth.models.loading import load_model_and_processor

    loaded = load_model_and_processor(None, device="cpu")
    model = loaded.model.eval()
    with torch.no_grad():
        model.model.language_model.norm.weight.zero_()
        head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
        head.weight.zero_()
        head.bias.fill_(-10.0)
        for token, logit in preferences.items():
            head.bias[token] = logit
    model.lm_head = head
    return _Drafter(model, loaded.processor, "Free OCR.", max_new_tokens, guard)


def test_each_draft_says_how_it_ended_and_the_report_lists_those_to_check(tmp_path):
    from deepsynth.evaluation.compare import generate_text
    from deepsynth.labeling import LabelReport, generate_batch

    pages = [Image.new("RGB", (300, 400), "white"), Image.new("RGB", (500, 200), "lightgrey")]
    word = 300  # "un" in the shipped tokenizer: visible text, not in the prompt
    cases = {"empty": ({1: 10.0}, 0), "guarded": ({word: 10.0, 1: 5.0}, 1), "cut": ({word: 10.0}, 0)}
    report = LabelReport(tmp_path / "drafts.jsonl", pages=6, skipped=0)
    for name, (preferences, guard) in cases.items():
        drafter = _drafter_preferring(preferences, guard)
        batch = generate_batch(drafter, pages)
        # Batched, each page ends as it does alone (generate_text: what eval and generate use).
        alone = [generate_text(drafter.model, drafter.processor, page, instruction=drafter.instruction,
                               max_new_tokens=drafter.max_new_tokens, no_repeat_ngram_size=guard) for page in pages]
        assert [(str(g), g.stop_reason, g.new_tokens, g.blocked_repeats) for g in batch] == [
            (str(g), g.stop_reason, g.new_tokens, g.blocked_repeats) for g in alone]
        for number, generation in enumerate(batch, 1):
            report.add(f"{name}{number}.png", generation)
    assert [g.stop_reason for g in generate_batch(_drafter_preferring(*cases["guarded"]), pages)] == [
        "repetition_guard"] * 2
    assert (report.drafted, report.empty, report.guarded, report.cut) == (
        6, ["empty1.png", "empty2.png"], ["guarded1.png", "guarded2.png"], ["cut1.png", "cut2.png"])
    empty, guarded, cut = report.warnings()
    assert empty.startswith("warning: 2 empty drafts (write their summary before training): empty1.png "
                            "[empty generation: the model ended the text at once (EOS as its first token)]")
    assert guarded.startswith("warning: 2 drafts ended by the repetition guard (the model was repeating itself): "
                              "guarded1.png [stopped by the repetition guard (no_repeat_ngram_size=1): it banned a "
                              "repeat and the model then ended the text (EOS after 1 tokens)]")
    assert cut.startswith("warning: 2 drafts stopped at --max-new-tokens: cut1.png "
                          "[stopped at max_new_tokens (6 tokens)")


def test_left_padding_keeps_prompts_of_different_lengths_exact():
    # Pages of other sizes (tiles) make prompts of other lengths: a batch pads them on the left.
    from deepsynth.data import load_sample_dataset
    from deepsynth.data.collate import build_generation_inputs
    from deepsynth.labeling import left_padded
    from deepsynth.models.loading import load_model_and_processor

    loaded = load_model_and_processor(None, device="cpu")
    model, processor, tokenizer = loaded.model.eval(), loaded.processor, loaded.processor.tokenizer
    pages = list(load_sample_dataset("train", max_samples=2)["image"])
    parts = [build_generation_inputs(processor, pages[0], "Free OCR."),
             build_generation_inputs(processor, pages[1], "Free OCR. Keep the line breaks of the page.")]
    assert parts[0]["input_ids"].shape[1] < parts[1]["input_ids"].shape[1]
    options = dict(max_new_tokens=6, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        batch = left_padded(parts, tokenizer.pad_token_id)
        together = model.generate(**batch, **options)[:, batch["input_ids"].shape[1]:]
        alone = [model.generate(**part, **options)[0, part["input_ids"].shape[1]:] for part in parts]
    assert [row.tolist() for row in together] == [row.tolist() for row in alone]


def test_a_killed_run_resumes_where_it_stopped_and_keeps_corrections(tmp_path):
    folder = _pages(tmp_path, pdf_pages=4)
    out = tmp_path / "drafts" / "drafts.jsonl"
    command = [sys.executable, "-m", "deepsynth.cli", "label", "--data", str(folder), "--out", str(out),
               "--batch-size", "1", *OCR]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out.is_file() and out.read_bytes().count(b"\n") >= 1):
            assert process.poll() is None, "label stopped before writing a draft"
            assert time.monotonic() < deadline, "no draft written in 120 s"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)  # a real kill, as a user's Ctrl-\ or the OOM killer does
    finally:
        process.wait()
    written = _lines(out)
    assert 1 <= len(written) < 6
    # The user corrects the first draft; a line cut mid-write (the kill's other outcome) ends the file.
    written[0]["summary"] = "Corrigé à la main."
    out.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in written) + '{"image": "rapp',
                   encoding="utf-8")
    report = draft_labels(folder, out, instruction="Free OCR.", max_new_tokens=3, progress=False)
    lines = _lines(out)
    assert report.skipped == len(written) and report.drafted == 6 - len(written)
    assert sorted(line["image"] for line in lines) == sorted(
        ["../scans/rapport.pdf#page=1", "../scans/rapport.pdf#page=2", "../scans/rapport.pdf#page=3",
         "../scans/rapport.pdf#page=4", "../scans/scan2.png", "../scans/scan10.png"])
    assert lines[: len(written)] == written  # kept as the user left them
    # A third run has nothing left to do and loads no model.
    assert draft_labels(folder, out, progress=False).drafted == 0
    assert len(load_documents(out)) == 6


@pytest.mark.parametrize(("setup", "argv_out", "words"), [
    ("corrupt", "drafts.jsonl", ("rapport.pdf", "damaged or truncated")),
    ("empty", "drafts.jsonl", ("holds no page images or PDFs",)),
    ("ok", "drafts.csv", ("drafts.csv", "expected a .jsonl file")),
    ("bad_line", "drafts.jsonl", ("drafts.jsonl", "line 2", "not valid JSON")),
])
def test_bad_input_is_one_error_before_the_model_loads(tmp_path, capsys, caplog, setup, argv_out, words):
    folder = _pages(tmp_path)
    out = tmp_path / argv_out
    if setup == "corrupt":
        pdf = folder / "rapport.pdf"
        pdf.write_bytes(pdf.read_bytes()[:-300])
    elif setup == "empty":
        folder = tmp_path / "nothing"
        folder.mkdir()
    elif setup == "bad_line":
        out.write_text('{"image": "scans/scan2.png", "summary": "ok"}\n{"image": oops}\n')
    before = out.read_bytes() if out.exists() else None
    caplog.set_level("INFO")
    assert main(["label", "--data", str(folder), "--out", str(out), *OCR]) == 2
    message = capsys.readouterr().err
    assert message.startswith("error: ") and "Traceback" not in message
    for word in words:
        assert word in message, (word, message)
    assert (out.read_bytes() if out.exists() else None) == before  # nothing written
    assert not [r for r in caplog.records if r.name.startswith("deepsynth.models")]  # refused before any model loads
