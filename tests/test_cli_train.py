"""`deepsynth train / eval / generate / export` as a user runs them, on the embedded model."""

import json

import pytest
import torch

from deepsynth.cli import TRAIN_FLAGS, _auto_configure, _train_config, build_parser, main
from deepsynth.training.recommend import recommend

SMALL = ["--max-train-samples", "2", "--max-eval-samples", "1", "--epochs", "1", "--grad-accum", "2",
         "--max-new-tokens", "4", "--resume", "never", "--preset", "tiny_data"]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    # The transcription instruction the embedded base was pretrained on: its adapter then reads the
    # page in test_generate_produces_text (with the summary instruction, a 1-update adapter on the
    # tiny base stops at once: an empty, if honest, generation).
    assert main(["train", *SMALL, "--output-dir", str(out), "--learning-rate", "0.01",
                 "--instruction", "Free OCR."]) == 0
    return out


def test_train_prints_before_after_and_writes_an_adapter(adapter_dir, capsys):
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    metrics = json.loads((adapter_dir / "metrics.json").read_text())
    assert metrics["optimizer_updates"] == 1
    assert "README.md" in {p.name for p in adapter_dir.iterdir()}


def test_every_train_flag_reaches_the_config(tmp_path):
    values = {"--model": "some/model", "--output-dir": str(tmp_path), "--data": "d.jsonl", "--eval-data": "e.jsonl",
              "--epochs": "7", "--batch-size": "3", "--grad-accum": "5", "--learning-rate": "0.0003",
              "--warmup-steps": "4", "--scheduler": "linear", "--max-train-samples": "9", "--max-eval-samples": "2",
              "--max-length": "700", "--instruction": "Résume.", "--seed": "11", "--resume": "never",
              "--eval-every": "3", "--early-stopping-patience": "2", "--max-new-tokens": "12",
              "--hub-model-id": "org/name", "--gate-dropout": "0.1", "--expert-dropout": "0.05",
              "--expert-dropout-min-keep": "2", "--router-aux-loss-coef": "0.01",
              "--loss-on-labelled-positions": "false"}
    assert set(values) == set(TRAIN_FLAGS)
    argv = ["train"] + [item for pair in values.items() for item in pair] + ["--column-mapping", "summary=target",
                                                                           "--push-to-hub"]
    config = _train_config(build_parser().parse_args(argv))
    for flag, (field, kind) in TRAIN_FLAGS.items():
        holder = config.optimizer if hasattr(config.optimizer, field) else config
        assert getattr(holder, field) == kind(values[flag]), flag
    assert config.column_mapping == {"summary": "target"}
    assert config.push_to_hub is True


def test_auto_applies_the_recommendation_for_the_data_size():
    config = _train_config(build_parser().parse_args(["train", "--max-train-samples", "12"]))
    auto = _auto_configure(config)
    rec = recommend(12)
    assert auto.preset == rec.preset_name == "balanced"
    assert auto.num_epochs == rec.training_config["num_epochs"]
    assert auto.gradient_accumulation_steps == rec.training_config["gradient_accumulation_steps"]
    assert auto.optimizer.warmup_steps is None and auto.optimizer.warmup_ratio == rec.training_config["warmup_ratio"]
    assert auto.optimizer.resolve_warmup(rec.estimates["effective_updates"]) == rec.estimates["warmup_steps"]


def test_auto_holds_out_samples_when_the_data_has_no_eval_split(tmp_path, capsys):
    from deepsynth.data import load_documents
    from deepsynth.data.collate import build_example
    from deepsynth.models import tiny

    rows = [(f"La commune annonce l'événement numéro {i} pour samedi.", f"Événement {i} samedi.") for i in range(7)]
    data = tmp_path / "notes.jsonl"
    data.write_text("".join(json.dumps({"text": t, "summary": s}, ensure_ascii=False) + "\n" for t, s in rows),
                    encoding="utf-8")
    config = _train_config(build_parser().parse_args(["train", "--data", str(data)]))
    auto = _auto_configure(config)
    _, processor = tiny.load_embedded()
    pages = load_documents(str(data))  # text rendered to page images, as the trainer encodes them
    tokens = sum(int((build_example(processor, image, summary)["labels"] != -100).sum())
                 for image, summary in zip(pages["image"], pages["summary"]))
    rec = recommend(7, has_eval_data=False, num_train_tokens=tokens)
    assert auto.holdout_samples == rec.evaluation["holdout_samples"] == 1
    assert auto.early_stopping_patience == 3 and auto.eval_every_updates == rec.training_config["eval_every_updates"]
    out = capsys.readouterr().out
    assert f"7 training samples ({tokens:,} target tokens), 1 held out for evaluation" in out
    # The data's own eval file: nothing is held out.
    with_eval = _train_config(build_parser().parse_args(["train", "--data", str(data), "--eval-data", str(data)]))
    assert _auto_configure(with_eval).holdout_samples is None


def test_eval_reports_before_and_after(adapter_dir, capsys):
    assert main(["eval", "--adapter", str(adapter_dir), "--max-eval-samples", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["eval"]["before"]["loss"] != data["eval"]["after"]["loss"]


def test_generate_produces_text(adapter_dir, capsys):
    assert main(["generate", "--adapter", str(adapter_dir), "--text", "Le marché ouvre samedi.",
                 "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip()


def test_export_merges_into_a_standalone_model(adapter_dir, tmp_path):
    from transformers import DeepseekOcr2ForConditionalGeneration

    from deepsynth.data import load_sample_dataset
    from deepsynth.data.collate import DataCollator, build_example
    from deepsynth.models.adapters import load_adapted_model

    merged_dir = tmp_path / "merged"
    assert main(["export", "--adapter", str(adapter_dir), "--merge", str(merged_dir)]) == 0
    merged = DeepseekOcr2ForConditionalGeneration.from_pretrained(merged_dir).eval()
    adapted = load_adapted_model(adapter_dir)
    row = load_sample_dataset("eval", max_samples=1)[0]
    batch = DataCollator(adapted.loaded.processor)([build_example(adapted.loaded.processor, row["image"], row["summary"])])
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, adapted.model(**batch).logits, rtol=1e-4, atol=1e-4)


def test_bad_train_input_is_one_clear_error(tmp_path, capsys):
    assert main(["train", "--epochs", "0", "--output-dir", str(tmp_path / "x")]) == 2
    assert "num_epochs" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
