"""PDFs and folders of pages as data: real PDFs, one row per page, errors naming file and page, training end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import DeepseekOcr2ImageProcessorPil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pdf_support import centre_colour, encrypted, pdf_bytes, png_bytes, write_pdf  # noqa: E402

from deepsynth.cli import main  # noqa: E402
from deepsynth.data import DataError, check_documents, load_documents  # noqa: E402
from deepsynth.data.pdf import DEFAULT_PAGE_SIZE, page_size_for  # noqa: E402

REFERENCE = Path(__file__).parent / "reference" / "deepseek-ocr" / "processor_config.json"


def _folder(root: Path, targets: str, name: str = "targets.csv") -> Path:
    """A folder of pages: a 3-page A4 PDF, a 1-page landscape PDF and a PNG scan, with ``targets``."""
    folder = root / "scans"
    folder.mkdir(exist_ok=True)
    write_pdf(folder / "report.pdf", ["Rapport page 1", "Rapport page 2", "Rapport page 3"])
    write_pdf(folder / "slide.pdf", ["Diapositive"], inches=(8.0, 4.5))
    (folder / "scan.png").write_bytes(png_bytes((300, 400), "white"))
    (folder / name).write_text(targets, encoding="utf-8")
    return folder


TARGETS = ("file,page,summary\n"
           "report.pdf,1,Le rapport commence.\n"
           "report.pdf,3,Le rapport conclut.\n"
           "slide.pdf,,Une diapositive.\n"
           "scan.png,,Un scan.\n")


def test_a_folder_of_pdfs_and_scans_gives_one_row_per_named_page(tmp_path):
    rows = load_documents(_folder(tmp_path, TARGETS))
    assert rows["summary"] == ["Le rapport commence.", "Le rapport conclut.", "Une diapositive.", "Un scan."]
    report_1, report_3, slide, scan = rows["image"]
    # The page the row names, not another: page 1 of the test PDF is red, page 3 blue.
    assert centre_colour(report_1)[0] > 200 and centre_colour(report_1)[2] < 50
    assert centre_colour(report_3)[2] > 200 and centre_colour(report_3)[0] < 50
    # Rendered so the longer side is the model's view (1024 px by default), whatever the page's shape.
    assert max(report_1.size) == max(slide.size) == DEFAULT_PAGE_SIZE
    assert report_1.height > report_1.width and slide.width > slide.height
    assert scan.size == (300, 400)  # images are read as they are


def test_an_image_column_may_name_a_pdf_page_and_a_jsonl_targets_file_works_too(tmp_path):
    lines = [{"image": "report.pdf#page=2", "summary": "Milieu.", "split": "train"},
             {"image": "slide.pdf", "summary": "Diapo.", "split": "train"},
             {"file": "report.pdf", "page": 3, "summary": "Fin.", "split": "eval"}]
    folder = _folder(tmp_path, "".join(json.dumps(line) + "\n" for line in lines), "targets.jsonl")
    train = load_documents(folder, split="train")
    assert train["summary"] == ["Milieu.", "Diapo."]
    assert centre_colour(train["image"][0])[1] > 100 and centre_colour(train["image"][0])[0] < 50  # page 2: green
    assert load_documents(folder, split="eval")["summary"] == ["Fin."]
    assert check_documents(folder).splits == {"train": 2, "eval": 1}


def test_pages_are_rendered_at_the_size_the_processor_reads(tmp_path):
    folder = _folder(tmp_path, TARGETS)
    assert max(load_documents(folder, page_size=384)["image"][0].size) == 384
    with pytest.raises(ValueError, match="target_size: got 0") as error:  # the caller's mistake, not the PDF's
        load_documents(folder, page_size=0)
    assert not isinstance(error.value, DataError)
    # The embedded model's view (384 px) and DeepSeek-OCR's Base mode (1024 px, from its processor_config).
    from deepsynth.models import tiny
    from deepsynth.models.processors import build_deepseek_ocr_processor

    assert page_size_for(tiny.build_processor()) == 384
    settings = json.loads(REFERENCE.read_text())
    assert page_size_for(build_deepseek_ocr_processor(tiny.shipped_tokenizer(), settings)) == 1024


def test_with_tiles_a_page_covers_the_tile_grid_the_processor_picks(tmp_path):
    # DeepSeek-OCR-2's image processor: 1024 global view + 2-6 tiles of 768 px.
    processor = type("Processor", (), {"image_processor": DeepseekOcr2ImageProcessorPil()})()
    size = page_size_for(processor)
    assert size(595.0, 842.0) == 3 * 768  # A4 portrait: a 2×3 grid
    assert size(800.0, 450.0) == 2 * 768  # 16:9 landscape: a 2×1 grid
    page = load_documents(_folder(tmp_path, TARGETS), page_size=size)["image"][0]
    assert max(page.size) == 3 * 768
    features = processor.image_processor(images=[page], return_tensors="pt")
    assert features["num_local_patches"].tolist() == [6]  # every tile cut from real pixels, none upscaled


@pytest.mark.parametrize(("targets", "words"), [
    ("file,summary\nreport.pdf,Tout le rapport.\n",
     ("row 2", "column 'file'", "report.pdf", "has 3 pages", "'page' column (1 to 3)", "FILE.pdf#page=N")),
    ("file,page,summary\nreport.pdf,4,Au-delà.\n", ("row 2", "report.pdf", "page 4", "no such page", "3 pages")),
    ("image,summary\nreport.pdf#page=0,Zéro.\n", ("row 2", "column 'image'", "page 0", "no such page")),
    ("file,page,summary\nscan.png,2,Deux.\n", ("row 2", "column 'page'", "scan.png", "is an image, not a PDF")),
    ("file,page,summary\nreport.pdf,deux,Deux.\n", ("row 2", "column 'page'", "page number", "'deux'")),
    ("image,summary\nreport.pdf#p2,X.\n", ("row 2", "column 'image'", "#page=N")),
    ("file,page,summary\nabsent.pdf,1,X.\n", ("row 2", "column 'file'", "absent.pdf", "not found")),
    ("file,image,summary\nreport.pdf,scan.png,X.\n", ("row 2", "column 'file'", "in one of them")),
])
def test_a_page_that_cannot_be_read_is_one_error_naming_row_file_and_page(tmp_path, targets, words):
    folder = _folder(tmp_path, targets)
    with pytest.raises(DataError) as error:
        load_documents(folder)
    message = str(error.value)
    assert message.startswith(f"{folder / 'targets.csv'}, ")
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize(("name", "content", "words"), [
    ("cut.pdf", pdf_bytes(["Page coupée"])[:-200], ("cut.pdf", "page 1", "damaged or truncated")),
    ("locked.pdf", encrypted(pdf_bytes(["Secret"])), ("locked.pdf", "page 1", "password-protected")),
    ("fake.pdf", png_bytes(), ("fake.pdf", "is not a PDF")),
    ("cut.png", png_bytes()[:60], ("cut.png", "cannot be decoded")),
])
def test_a_damaged_truncated_or_encrypted_file_is_named_and_nothing_is_trained(tmp_path, capsys, name, content, words):
    folder = _folder(tmp_path, f"file,page,summary\nscan.png,,Bon.\n{name},1,Mauvais.\n"
                     if name.endswith(".pdf") else f"file,summary\nscan.png,Bon.\n{name},Mauvais.\n")
    (folder / name).write_bytes(content)
    out = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--output-dir", str(out), "--preset", "tiny_data"]) == 2
    message = capsys.readouterr().err
    assert message.startswith("error: ") and "Traceback" not in message
    for word in (str(folder / "targets.csv"), "row 3", *words):
        assert word in message, (word, message)
    assert not out.exists()


def test_a_pdf_with_only_an_owner_password_is_read(tmp_path):
    # Owner-only protection restricts editing, not reading: every viewer opens it without a password.
    folder = _folder(tmp_path, "file,summary\nopen.pdf,Lisible.\n")
    (folder / "open.pdf").write_bytes(encrypted(pdf_bytes(["Lisible"]), user_password=""))
    assert max(load_documents(folder)["image"][0].size) == DEFAULT_PAGE_SIZE


def test_a_folder_without_exactly_one_targets_file_says_what_to_do(tmp_path):
    folder = _folder(tmp_path, TARGETS)
    (folder / "targets.csv").unlink()
    with pytest.raises(DataError) as error:
        load_documents(folder)
    message = str(error.value)
    for word in ("3 page file(s)", "report.pdf", "no targets file", "'file', 'page'", "deepsynth label --data"):
        assert word in message, (word, message)
    (folder / "a.csv").write_text(TARGETS)
    (folder / "b.jsonl").write_text("")
    with pytest.raises(DataError, match=r"several data files \(a.csv, b.jsonl\)"):
        load_documents(folder)


def test_a_pdf_given_as_data_says_to_name_it_in_a_targets_file(tmp_path):
    with pytest.raises(DataError, match="name it in a targets file"):
        load_documents(write_pdf(tmp_path / "one.pdf", ["Seule"]))
    with pytest.raises(DataError, match="absent.pdf: file not found"):  # a local path, not a Hub dataset name
        load_documents("absent.pdf")


def test_train_from_a_folder_of_pdfs_end_to_end(tmp_path, capsys):
    folder = _folder(tmp_path, TARGETS)
    out = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--output-dir", str(out), "--preset", "tiny_data", "--epochs", "1",
                 "--grad-accum", "4", "--max-new-tokens", "2", "--resume", "never"]) == 0
    assert (out / "adapter_model.safetensors").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["optimizer_updates"] == 1 and metrics["num_eval_samples"] == 4
    assert "Before/after on 4" in capsys.readouterr().out


def test_a_run_renders_pdf_pages_at_the_size_its_resolution_mode_reads():
    from deepsynth.evaluation.pages import page_size_for_model as page_size_for_run

    # One global view: its size (the embedded model's default is OCR-2's 768-px view on 8-px patches).
    assert page_size_for_run(None, None) == 384 and page_size_for_run(None, "base") == 512
    v1 = "deepseek-ai/DeepSeek-OCR"
    assert [page_size_for_run(v1, mode) for mode in (None, "tiny", "small", "base", "large")] == [
        1024, 512, 640, 1024, 1280]
    # Tiles: the page covers the grid the processor picks (A4 portrait: 2×3 tiles, a square: 2×2), never less
    # than the global view.
    gundam, dynamic = page_size_for_run(v1, "gundam"), page_size_for_run("deepseek-community/DeepSeek-OCR-2", None)
    assert (gundam(595.0, 842.0), gundam(300.0, 300.0), gundam(900.0, 100.0)) == (3 * 640, 2 * 640, 6 * 640)
    assert dynamic(595.0, 842.0) == 3 * 768
    # A text model reads no pages; a mode its family lacks is the loader's to report.
    assert page_size_for_run("HuggingFaceTB/SmolLM2-135M", None) == DEFAULT_PAGE_SIZE
    assert page_size_for_run(None, "gundam") == DEFAULT_PAGE_SIZE


@pytest.mark.parametrize(("mode", "side"), [(None, 384), ("base", 512), ("dynamic", 3 * 384)])
def test_training_planning_and_eval_read_pdf_pages_in_the_runs_mode(tmp_path, mode, side):
    from deepsynth.evaluation.adapter_folder import adapter_eval_rows
    from deepsynth.training.config import TrainerConfig
    from deepsynth.training.plan import plan_run

    folder = _folder(tmp_path, TARGETS)
    config = TrainerConfig(data_path=str(folder), image_mode=mode)
    plan = plan_run(config)  # the data the trainer runs on
    report_1, report_3, slide, _ = plan.prepared.train["image"]
    assert max(report_1.size) == max(report_3.size) == side  # A4: 1 global view, or the 2×3 tiles' 3 × 384 px
    assert max(slide.size) == (side if mode != "dynamic" else 2 * 384)  # 16:9: a 2×1 grid of tiles
    assert plan.data["train_samples"] == 4
    # eval reads the pages in the training mode, or in the mode it is told to use instead.
    settings = TrainerConfig(image_mode=mode)  # an adapter trained in this mode, scored on the folder
    assert max(adapter_eval_rows(tmp_path, settings, folder, None, None).rows["image"][0].size) == side
    other, other_side = ("base", 512) if mode is None else ("small", 384)
    assert max(adapter_eval_rows(tmp_path, settings, folder, None, other).rows["image"][0].size) == other_side
