"""A run is its plan: planned once, the data loaded and every PDF page rendered once, then trained as planned."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pypdfium2
import pytest

from deepsynth.training.config import TrainerConfig
from deepsynth.training.plan import plan_run
from deepsynth.training.production_trainer import UnifiedProductionTrainer
from deepsynth.training.targets import count_trainable_params

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pdf_support import write_pdf  # noqa: E402

PAGES = ("Rapport annuel", "Compte rendu", "Note de service")


def _pdf_folder(root: Path, targets: str = "targets.csv", splits: tuple[str, ...] | None = None) -> Path:
    """3 one-page PDFs and their targets file (with a 'split' column when ``splits`` is given)."""
    folder = root / "pdfs"
    folder.mkdir()
    rows = []
    for number, text in enumerate(PAGES):
        write_pdf(folder / f"page{number}.pdf", [text])
        rows.append({"file": f"page{number}.pdf", "summary": f"{text}.", **({"split": splits[number]} if splits else {})})
    if targets.endswith(".csv"):
        lines = [",".join(rows[0]), *(",".join(row.values()) for row in rows)]
    else:
        lines = [json.dumps(row) for row in rows]
    (folder / targets).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return folder


def _count_renders(monkeypatch) -> Counter:
    """Renders of each page (named by its text), counted where PDFium rasterises: pypdfium2's PdfPage.render."""
    renders: Counter = Counter()
    render = pypdfium2.PdfPage.render

    def counting(page, *args, **kwargs):
        renders[page.get_textpage().get_text_range().strip()] += 1
        return render(page, *args, **kwargs)

    monkeypatch.setattr(pypdfium2.PdfPage, "render", counting)
    return renders


def _run_planned(config: TrainerConfig) -> dict:
    plan = plan_run(config)  # what `deepsynth train` prints before it trains
    metrics, _ = UnifiedProductionTrainer.from_plan(plan).train()
    assert metrics["optimizer_updates"] == 2 and metrics["eval"]["after"]
    return metrics


def _config(data: Path, output_dir: Path, **settings) -> TrainerConfig:
    return TrainerConfig(data_path=str(data), output_dir=str(output_dir), batch_size=1, num_epochs=1,
                         gradient_accumulation_steps=1, max_new_tokens=2, resume_from_checkpoint="never", **settings)


def test_a_run_on_a_pdf_folder_renders_each_page_once(tmp_path, monkeypatch):
    renders = _count_renders(monkeypatch)
    metrics = _run_planned(_config(_pdf_folder(tmp_path), tmp_path / "run", holdout_samples=1))
    assert (metrics["num_train_samples"], metrics["num_eval_samples"]) == (2, 1)
    assert renders == {text: 1 for text in PAGES}  # planning, training and both evaluations included


@pytest.mark.parametrize("targets, splits", [("targets.jsonl", None), ("targets.csv", ("train", "train", "eval"))])
def test_planning_a_pdf_folder_read_per_split_renders_each_page_once(tmp_path, monkeypatch, targets, splits):
    renders = _count_renders(monkeypatch)
    # Planning alone: the run renders nothing more (the test above).
    plan_run(_config(_pdf_folder(tmp_path, targets, splits), tmp_path / "run", holdout_samples=None if splits else 1))
    assert renders == {text: 1 for text in PAGES}


def test_the_adapter_records_the_mode_the_plan_read_pages_in(tmp_path):
    config = TrainerConfig(output_dir=str(tmp_path / "run"), batch_size=1, num_epochs=1, max_train_samples=1,
                           max_eval_samples=1, max_new_tokens=2, resume_from_checkpoint="never")
    trainer = UnifiedProductionTrainer(config)
    metrics, paths = trainer.train()  # planned first: the plan is the trainer's
    assert trainer.plan.config == config and trainer.plan.model.image_mode.name == "small"
    assert TrainerConfig.from_file(paths["training_config"]).image_mode == "small"  # null in the config: the default
    assert metrics["image_mode"] == trainer.plan.vision_tokens.to_dict()


def test_a_run_without_lora_trains_what_the_parameter_count_says(tmp_path):
    config = TrainerConfig(output_dir=str(tmp_path / "full"), use_lora=False, batch_size=1, num_epochs=1,
                           max_train_samples=1, max_eval_samples=1, max_new_tokens=2, resume_from_checkpoint="never")
    metrics, _ = UnifiedProductionTrainer(config).train()
    counted = count_trainable_params(None, config.lora_config())  # `deepsynth inspect`, the recommendation
    assert metrics["trainable_params"]["by_group"] == counted.by_group
    # Every weight but the frozen vision path: the language model's 2.8M of the 3.6M.
    assert 2_000_000 < counted.trainable < counted.total_params
