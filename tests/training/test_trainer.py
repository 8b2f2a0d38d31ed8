"""End-to-end training runs on the embedded tiny DeepSeek-OCR-2 and the bundled French samples."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from deepsynth.data import DataError
from deepsynth.evaluation.adapter_folder import load_adapted_model
from deepsynth.training.config import OptimizerConfig, TrainerConfig
from deepsynth.training.errors import ConfigError
from deepsynth.training.production_trainer import UnifiedProductionTrainer
from deepsynth.training.progress import read_events, typed_events
from deepsynth.training.recommend import estimate_updates, recommend
from deepsynth.training.report import RunReport

TOKEN = "hf_TESTTOKEN_do_not_leak_4242"


def small(tmp_path, name="run", **overrides) -> TrainerConfig:
    settings = dict(output_dir=str(tmp_path / name), batch_size=1, num_epochs=2, gradient_accumulation_steps=2,
                    max_train_samples=3, max_eval_samples=1, max_new_tokens=6, resume_from_checkpoint="never",
                    preset="tiny_data")
    settings.update(overrides)
    return TrainerConfig.from_dict(settings)


def adapter_tensors(directory) -> dict[str, torch.Tensor]:
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    assert tensors and any("lora_B" in name and t.abs().sum() > 0 for name, t in tensors.items())
    return tensors


def test_seed_test_1_tiny_data_updates_equal_recommend(tmp_path):
    # The seed's Test 1 with the embedded model and bundled data; epochs cut from 300 to 20 for CI
    # (examples/tiny_data.yaml runs the full 300).
    config = TrainerConfig(
        model_name=None, output_dir=str(tmp_path / "seed1"), batch_size=1, num_epochs=20, max_train_samples=3,
        max_eval_samples=1, gradient_accumulation_steps=16, use_lora=True, lora_rank=16, lora_alpha=32,
        lora_dropout=0.1, lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"],
        max_new_tokens=4, hub_token=TOKEN,
    )
    metrics, paths = UnifiedProductionTrainer(config).train()
    assert metrics["optimizer_updates"] == 20 == estimate_updates(3, 1, 16, 20).effective_updates
    rec = recommend(3)  # same semantics as the full seed run: 300 epochs → 300 updates
    assert rec.estimates["effective_updates"] == estimate_updates(3, 1, 16, 300).effective_updates == 300
    # Outputs a user relies on.
    out = paths["output_dir"]
    for name in ("adapter_config.json", "adapter_model.safetensors", "training_config.json", "metrics.json",
                 "loss_curve.png", "progress.jsonl", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert len(list(out.glob("checkpoint-*"))) <= config.save_total_limit  # rotated
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["eval"]["before"]) == set(saved["eval"]["after"]) >= {"loss", "rouge1", "rouge2", "rougeL", "cer"}
    assert saved["eval"]["after"]["loss"] < saved["eval"]["before"]["loss"]  # it learned something
    events = [json.loads(line)["event"] for line in (out / "progress.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events[-1] == "done" and "log" in events
    # Both files follow their one schema: metrics.json is a RunReport, each progress line a typed event.
    assert RunReport.from_dict(saved).to_dict() == saved == metrics
    records, _ = read_events(out / "progress.jsonl")
    assert len(typed_events(records)) == len(records) == len(events)


@pytest.mark.parametrize("samples, batch, accumulation, epochs", [(5, 2, 2, 2), (4, 1, 3, 2), (3, 3, 1, 3)])
def test_updates_performed_equal_estimate(tmp_path, samples, batch, accumulation, epochs):
    config = small(tmp_path, max_train_samples=samples, batch_size=batch, gradient_accumulation_steps=accumulation,
                   num_epochs=epochs)
    metrics, _ = UnifiedProductionTrainer(config).train()
    assert metrics["optimizer_updates"] == metrics["estimated_updates"] == \
        estimate_updates(samples, batch, accumulation, epochs).effective_updates


def test_seed_test_2_balanced(tmp_path):
    config = TrainerConfig(output_dir=str(tmp_path / "seed2"), batch_size=1, num_epochs=1, max_train_samples=20,
                           max_eval_samples=1, gradient_accumulation_steps=16, lora_rank=32, lora_alpha=64,
                           lora_dropout=0.08, max_new_tokens=4,
                           lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    metrics, _ = UnifiedProductionTrainer(config).train()
    assert metrics["optimizer_updates"] == 2  # 20 batches / 16 → 2 updates in the epoch
    assert metrics["trainable_params"]["by_group"]["shared_experts"] > 0


class Interrupt(TrainerCallback):
    """Simulates a crash (e.g. the machine going away) right after update ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    common = dict(max_train_samples=3, num_epochs=4, gradient_accumulation_steps=1, checkpoint_every_updates=4,
                  optimizer=OptimizerConfig(learning_rate=1e-3))
    full_metrics, full_paths = UnifiedProductionTrainer(small(tmp_path, "full", **common)).train()

    interrupted = small(tmp_path, "interrupted", **common, resume_from_checkpoint="auto")
    with pytest.raises(KeyboardInterrupt):
        UnifiedProductionTrainer(interrupted, callbacks=[Interrupt(6)]).train()
    assert (tmp_path / "interrupted" / "checkpoint-4").is_dir()
    events = [json.loads(line) for line in (tmp_path / "interrupted" / "progress.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "error" and "KeyboardInterrupt" in events[-1]["message"]
    resumed_metrics, resumed_paths = UnifiedProductionTrainer(interrupted).train()  # resumes automatically
    assert resumed_metrics["train"]["resumed_from"].endswith("checkpoint-4")
    assert resumed_metrics["optimizer_updates"] == full_metrics["optimizer_updates"] == 12
    expected, actual = adapter_tensors(full_paths["adapter"]), adapter_tensors(resumed_paths["adapter"])
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6)


def test_adapter_reload_gives_identical_logits(tmp_path):
    trainer = UnifiedProductionTrainer(small(tmp_path, optimizer=OptimizerConfig(learning_rate=1e-3)))
    metrics, paths = trainer.train()
    adapted = load_adapted_model(paths["adapter"])
    from deepsynth.data import load_sample_dataset
    from deepsynth.data.collate import DataCollator, build_example

    row = load_sample_dataset("eval", max_samples=1)[0]
    batch = DataCollator(adapted.loaded.processor)([build_example(adapted.loaded.processor, row["image"], row["summary"])])
    with torch.no_grad():
        adapted_logits = adapted.model(**batch).logits
        with adapted.model.disable_adapter():
            base_logits = adapted.model(**batch).logits
    assert not torch.allclose(adapted_logits, base_logits)  # the adapter does something
    # Reloading twice is deterministic and equals the run's own in-memory evaluation loss.
    again = load_adapted_model(paths["adapter"])
    with torch.no_grad():
        torch.testing.assert_close(again.model(**batch).logits, adapted_logits)


def test_bad_data_fails_before_anything_is_written(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "Un document.", "summary": "Résumé."}\n{"text": "Deux.", "summary": ""}\n', encoding="utf-8")
    config = small(tmp_path, data_path=str(data))
    with pytest.raises(DataError, match="line 2"):
        UnifiedProductionTrainer(config).train()
    assert not (tmp_path / "run").exists()


def test_max_length_without_room_for_the_target_is_refused(tmp_path):
    # Upstream trained on all-masked labels (loss 0) when max_length was shorter than the image tokens.
    config = small(tmp_path, max_length=64)
    with pytest.raises(ConfigError, match="max_length"):
        UnifiedProductionTrainer(config).train()
    assert not (tmp_path / "run").exists()


def test_user_data_without_eval_split_is_scored_on_training_samples(tmp_path):
    data = tmp_path / "mine.csv"
    data.write_text("text,summary\nLe marché ouvre samedi.,Marché samedi.\nLa piscine ferme lundi.,Piscine fermée lundi.\n",
                    encoding="utf-8")
    metrics, _ = UnifiedProductionTrainer(small(tmp_path, data_path=str(data), max_eval_samples=None)).train()
    assert metrics["eval_on_training_data"] is True
    assert metrics["num_train_samples"] == 2 and metrics["num_eval_samples"] == 2


def test_early_stopping_stops_when_held_out_loss_stops_improving(tmp_path):
    # A learning rate far too high makes the held-out loss worse after the first updates.
    config = small(tmp_path, max_train_samples=2, num_epochs=30, gradient_accumulation_steps=2, eval_every_updates=1,
                   early_stopping_patience=2, optimizer=OptimizerConfig(learning_rate=3.0, warmup_steps=0))
    metrics, _ = UnifiedProductionTrainer(config).train()
    assert metrics["early_stopped"] is True
    assert metrics["optimizer_updates"] < metrics["estimated_updates"] == 30
    assert any("eval_loss" in entry for entry in metrics["history"])


def test_tensorboard_logs_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    _, paths = UnifiedProductionTrainer(small(tmp_path)).train()
    assert list(paths["output_dir"].rglob("events.out.tfevents.*"))


def test_calibrated_time_estimate_is_measured(capsys):
    rec = recommend(3, calibrate=True)
    minutes = rec.estimates["estimated_time_minutes"]
    note = next(w for w in rec.warnings if "measured here" in w)
    seconds_per_step = float(note.split("measured here: ")[1].split(" s per")[0])
    assert seconds_per_step > 0
    assert minutes == pytest.approx(seconds_per_step * rec.estimates["total_steps"] / 60, rel=0.01, abs=0.01)
    assert recommend(3).estimates["estimated_time_minutes"] is None


@pytest.mark.parametrize("example", sorted(p.name for p in (Path(__file__).parents[2] / "examples").glob("*.yaml")))
def test_example_configs_load(example):
    config = TrainerConfig.from_file(Path(__file__).parents[2] / "examples" / example)
    assert config.preset is not None


def test_trainer_encodes_each_page_once_unless_told_not_to(tmp_path):
    cached, _ = UnifiedProductionTrainer(small(tmp_path, "cached", num_epochs=3)).train()
    assert cached["feature_cache"]["enabled"] is True
    # Every train and eval page once (3 + 1 distinct pages), then the vision path is let go.
    assert cached["feature_cache"]["encoder_calls"] == cached["num_train_samples"] + cached["num_eval_samples"] == 4
    assert cached["feature_cache"]["vision_released_bytes"] > 0
    plain, _ = UnifiedProductionTrainer(small(tmp_path, "plain", num_epochs=3, use_feature_cache=False)).train()
    assert plain["feature_cache"] == {"enabled": False, "reason": "disabled by the config (use_feature_cache: false)"}
    assert plain["train"]["train_loss"] == pytest.approx(cached["train"]["train_loss"], rel=1e-4)
    # The before/after evaluation from cached features (labelled-position loss) is the pixel path's.
    for when in ("before", "after"):
        for metric, value in plain["eval"][when].items():
            assert cached["eval"][when][metric] == pytest.approx(value, rel=1e-4, abs=1e-6), (when, metric)
    assert [s["before"] for s in cached["samples"]] == [s["before"] for s in plain["samples"]]
