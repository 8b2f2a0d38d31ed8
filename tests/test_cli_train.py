"""`deepsynth train / eval / generate / export` as a user runs them, on the embedded model."""

import json
from pathlib import Path

import pytest
import torch

from deepsynth.cli import main
from deepsynth.cli.flags import flag_overrides, train_flags
from deepsynth.cli.parser import build_parser
from deepsynth.cli.train import plan_train, train_config
from deepsynth.training.config import TrainerConfig
from deepsynth.training.recommend import recommend

REPO = Path(__file__).resolve().parents[1]

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


def _config(argv: list[str]) -> TrainerConfig:
    args = build_parser().parse_args(argv)
    return train_config(args, flag_overrides(args))[0]


# The train flags of the CLI before they were generated from TrainerConfig's metadata: tests, docs
# and scripts use them, so each must still set its field. (Every field's flag: test_field_reachability.)
OLD_FLAGS = {
    "--model": ("model_name", str), "--output-dir": ("output_dir", str), "--data": ("data_path", str),
    "--eval-data": ("eval_data_path", str), "--epochs": ("num_epochs", int), "--batch-size": ("batch_size", int),
    "--grad-accum": ("gradient_accumulation_steps", int), "--learning-rate": ("learning_rate", float),
    "--warmup-steps": ("warmup_steps", int), "--scheduler": ("scheduler_type", str),
    "--max-train-samples": ("max_train_samples", int), "--max-eval-samples": ("max_eval_samples", int),
    "--max-length": ("max_length", int), "--instruction": ("instruction", str), "--seed": ("seed", int),
    "--resume": ("resume_from_checkpoint", str), "--eval-every": ("eval_every_updates", int),
    "--early-stopping-patience": ("early_stopping_patience", int), "--max-new-tokens": ("max_new_tokens", int),
    "--hub-model-id": ("hub_model_id", str), "--gate-dropout": ("gate_dropout_rate", float),
    "--expert-dropout": ("expert_dropout_rate", float), "--expert-dropout-min-keep": ("expert_dropout_min_keep", int),
    "--router-aux-loss-coef": ("router_aux_loss_coef", float),
}


def test_every_existing_train_flag_still_reaches_its_field(tmp_path):
    values = {"--model": "some/model", "--output-dir": str(tmp_path), "--data": "d.jsonl", "--eval-data": "e.jsonl",
              "--epochs": "7", "--batch-size": "3", "--grad-accum": "5", "--learning-rate": "0.0003",
              "--warmup-steps": "4", "--scheduler": "linear", "--max-train-samples": "9", "--max-eval-samples": "2",
              "--max-length": "700", "--instruction": "Résume.", "--seed": "11", "--resume": "never",
              "--eval-every": "3", "--early-stopping-patience": "2", "--max-new-tokens": "12",
              "--hub-model-id": "org/name", "--gate-dropout": "0.1", "--expert-dropout": "0.05",
              "--expert-dropout-min-keep": "2", "--router-aux-loss-coef": "0.01"}
    assert set(values) == set(OLD_FLAGS) and set(OLD_FLAGS) | {"--preset", "--column-mapping", "--push-to-hub"} <= set(
        train_flags())
    argv = ["train"] + [item for pair in values.items() for item in pair] + ["--column-mapping", "summary=target",
                                                                           "--push-to-hub"]
    config = _config(argv)
    for flag, (field, kind) in OLD_FLAGS.items():
        holder = config.optimizer if hasattr(config.optimizer, field) else config
        assert getattr(holder, field) == kind(values[flag]), flag
    assert config.column_mapping == {"summary": "target"}
    assert config.push_to_hub is True
    assert _config(["train", "--preset", "balanced"]).lora_rank == 32


def test_flags_win_over_the_config_file_and_the_preset(tmp_path):
    config = _config(["train", "--config", str(REPO / "examples" / "tiny_data.yaml"), "--preset", "balanced",
                      "--lora-rank", "8", "--warmup-ratio", "0.2", "--no-feature-cache"])
    assert config.max_train_samples == 3  # the file's
    assert (config.preset, config.lora_alpha) == ("balanced", 64)  # the preset's, over the file's
    assert config.lora_rank == 8 and config.use_feature_cache is False  # the flags', over both
    assert (config.optimizer.warmup_ratio, config.optimizer.warmup_steps) == (0.2, None)  # the file had steps: 30


def test_plain_train_plans_the_readme_demonstration(capsys, tmp_path):
    # Plain `deepsynth train` runs what the README's main job runs (tests/test_quickstart.py trains it:
    # under 3 minutes on 2 cores) and prints what it chose, once. --dry-run stops after the plan.
    plan = plan_train(build_parser().parse_args(["train"]))
    assert plan.config == TrainerConfig.from_file(REPO / "examples" / "quickstart.yaml")
    assert plan.updates["effective_updates"] == 175 and plan.data["eval_samples"] == 12
    out_dir = tmp_path / "demo"
    assert main(["train", "--dry-run", "--output-dir", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Plan: the README's demonstration on the bundled documents")
    assert out.count("175 optimizer updates") == 1 and "deepsynth train --data FILE" in out
    assert not out_dir.exists()  # nothing trained or written


def test_auto_applies_the_recommendation_for_the_data_size():
    plan = plan_train(build_parser().parse_args(["train", "--auto", "--max-train-samples", "12"]))
    auto, rec = plan.config, recommend(12)
    assert auto.preset == rec.preset_name == "balanced"
    assert auto.num_epochs == rec.training_config["num_epochs"]
    assert auto.gradient_accumulation_steps == rec.training_config["gradient_accumulation_steps"]
    assert auto.optimizer.warmup_steps is None and auto.optimizer.warmup_ratio == rec.training_config["warmup_ratio"]
    assert auto.optimizer.resolve_warmup(rec.estimates["effective_updates"]) == rec.estimates["warmup_steps"]
    assert plan.updates["effective_updates"] == rec.estimates["effective_updates"]


def _notes(tmp_path) -> Path:
    rows = [(f"La commune annonce l'événement numéro {i} pour samedi.", f"Événement {i} samedi.") for i in range(7)]
    data = tmp_path / "notes.jsonl"
    data.write_text("".join(json.dumps({"text": t, "summary": s}, ensure_ascii=False) + "\n" for t, s in rows),
                    encoding="utf-8")
    return data


def test_data_alone_plans_as_auto_and_holds_out_without_an_eval_split(tmp_path, capsys):
    from deepsynth.data import load_documents
    from deepsynth.data.collate import build_example
    from deepsynth.models import tiny

    data = _notes(tmp_path)
    auto = plan_train(build_parser().parse_args(["train", "--data", str(data)])).config
    assert auto == plan_train(build_parser().parse_args(["train", "--auto", "--data", str(data)])).config
    _, processor = tiny.load_embedded()
    pages = load_documents(str(data))  # text rendered to page images, as the trainer encodes them
    tokens = sum(int((build_example(processor, image, summary)["labels"] != -100).sum())
                 for image, summary in zip(pages["image"], pages["summary"]))
    rec = recommend(7, has_eval_data=False, num_train_tokens=tokens)
    assert auto.holdout_samples == rec.evaluation["holdout_samples"] == 1
    assert auto.early_stopping_patience == 3 and auto.eval_every_updates == rec.training_config["eval_every_updates"]
    assert main(["train", "--data", str(data), "--dry-run"]) == 0
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "plans as --auto does" in out and f"target tokens: {tokens:,}" in out
    # Why nothing is evaluated from the data itself: said once, in the CLI's words.
    assert out.count("no --eval-data and it has no 'split' column: 1 held out for evaluation") == 1
    assert "split=None" not in out and out.count("held out") == 1
    # The data's own eval file: nothing is held out.
    with_eval = build_parser().parse_args(["train", "--data", str(data), "--eval-data", str(data)])
    assert plan_train(with_eval).config.holdout_samples is None


def test_explicit_flags_are_kept_over_the_recommendation(tmp_path, capsys):
    assert main(["train", "--data", str(_notes(tmp_path)), "--epochs", "4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "  kept: --epochs 4 (yours, not the recommendation's)" in out
    assert "4 optimizer updates" in out and "preset tiny_data, recommended for < 10 training samples" in out


def test_a_bad_flag_value_is_one_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--column-mapping", "summary", "--dry-run"])
    assert exit_.value.code == 2
    assert "--column-mapping" in capsys.readouterr().err


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
    from deepsynth.evaluation.adapter_folder import load_adapted_model

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
