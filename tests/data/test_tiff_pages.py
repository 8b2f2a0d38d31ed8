"""Multi-page TIFFs are read like PDFs: a page number picks the page, a row that names none is refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pdf_support import png_bytes  # noqa: E402

from deepsynth.cli import main  # noqa: E402
from deepsynth.data import load_documents  # noqa: E402
from deepsynth.data.folders import list_pages  # noqa: E402
from deepsynth.data.table import DataError  # noqa: E402

COLOURS = ((200, 0, 0), (0, 150, 0), (0, 0, 200))  # one per page, so a test can tell which page it got


def _tiff(path: Path, pages: int = 3) -> Path:
    frames = [Image.new("RGB", (300, 400), COLOURS[number]) for number in range(pages)]
    frames[0].save(path, format="TIFF", save_all=True, append_images=frames[1:])
    return path


def _folder(tmp_path: Path, targets: str) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    _tiff(folder / "fax.tif")
    _tiff(folder / "single.tiff", pages=1)
    (folder / "targets.csv").write_text(targets, encoding="utf-8")
    return folder


def test_a_page_number_picks_the_page_of_a_multi_page_tiff(tmp_path):
    folder = _folder(tmp_path, "file,page,summary\nfax.tif,2,Deux.\nfax.tif#page=3,,Trois.\nsingle.tiff,,Une.\n")
    rows = load_documents(folder)
    assert [image.getpixel((10, 10)) for image in rows["image"]] == [COLOURS[1], COLOURS[2], COLOURS[0]]


@pytest.mark.parametrize(("targets", "words"), [
    ("file,summary\nfax.tif,Tout le fax.\n",
     ("row 2", "column 'file'", "fax.tif", "has 3 pages", "'page' column (1 to 3)", "FILE.tif#page=N")),
    ("file,page,summary\nfax.tif,4,Au-delà.\n", ("row 2", "fax.tif", "page 4", "no such page", "3 pages")),
    ("file,page,summary\nsingle.tiff,2,Deux.\n", ("row 2", "single.tiff", "page 2", "no such page", "1 page")),
    ("image,page,summary\nfax.tif#page=2,3,X.\n", ("row 2", "names page 2", "says 3")),
])
def test_a_multi_page_tiff_without_a_valid_page_is_one_error(tmp_path, targets, words):
    folder = _folder(tmp_path, targets)
    with pytest.raises(DataError) as error:
        load_documents(folder)
    message = str(error.value)
    for word in words:
        assert word in message, (word, message)


def test_label_lists_every_page_of_a_multi_page_tiff_and_train_reads_the_drafts(tmp_path):
    from deepsynth.labeling import draft_labels

    folder = tmp_path / "scans"
    folder.mkdir()
    _tiff(folder / "fax.tif")
    (folder / "scan.png").write_bytes(png_bytes((300, 400)))
    assert [page.name for page in list_pages(folder, 100)] == ["fax.tif#page=1", "fax.tif#page=2", "fax.tif#page=3",
                                                              "scan.png"]
    out = folder / "targets.jsonl"
    report = draft_labels(folder, out, instruction="Free OCR.", max_new_tokens=1, progress=False)
    assert report.drafted == 4
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["image"] for line in lines][:3] == ["fax.tif#page=1", "fax.tif#page=2", "fax.tif#page=3"]
    assert draft_labels(folder, out, instruction="Free OCR.", max_new_tokens=1, progress=False).skipped == 4
    assert len(load_documents(folder)) == 4


def test_generate_reads_a_tiff_page_and_asks_for_one(tmp_path, capsys):
    import torch
    from peft import LoraConfig, get_peft_model

    from deepsynth.models.loading import load_model_and_processor

    adapter = tmp_path / "adapter"
    torch.manual_seed(0)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=r".*language_model.*\.q_proj", init_lora_weights=False)
    get_peft_model(load_model_and_processor(None).model, lora).save_pretrained(adapter)
    (adapter / "training_config.json").write_text('{"max_new_tokens": 1}', encoding="utf-8")
    fax = _tiff(tmp_path / "fax.tif")
    assert main(["generate", "--adapter", str(adapter), "--image", f"{fax}#page=2"]) == 0
    capsys.readouterr()
    assert main(["generate", "--adapter", str(adapter), "--image", str(fax)]) == 2
    assert capsys.readouterr().err == (f"error: generate: image {fax} has 3 pages and names none; give one page: "
                                       f"{fax}#page=N (N from 1 to 3)\n")
