"""A resumed run reports the whole run: metrics.json history, loss curve and train_loss cover every segment."""

import json

import pytest
from transformers import TrainerCallback

from deepsynth.training.config import OptimizerConfig, TrainerConfig
from deepsynth.training.production_trainer import UnifiedProductionTrainer
from deepsynth.training.report import RunReport


def config(out, **overrides) -> TrainerConfig:
    settings = dict(output_dir=str(out), batch_size=1, num_epochs=3, gradient_accumulation_steps=1,
                    max_train_samples=3, max_eval_samples=1, max_new_tokens=1, preset="tiny_data",
                    checkpoint_every_updates=2, resume_from_checkpoint="auto",
                    optimizer=OptimizerConfig(learning_rate=1e-3))
    settings.update(overrides)
    return TrainerConfig.from_dict(settings)


class Crash(TrainerCallback):
    """The process dies right after update ``at`` (the real SIGKILL case is in test_fault_injection)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt


class TransformersTrainLoss(TrainerCallback):
    """Records the ``train_loss`` transformers itself reports at the end of a run."""

    value = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "train_loss" in logs:
            self.value = logs["train_loss"]


def test_resumed_run_reports_history_curve_and_train_loss_of_the_whole_run(tmp_path):
    reported = TransformersTrainLoss()
    full, _ = UnifiedProductionTrainer(config(tmp_path / "full"), callbacks=[reported]).train()
    assert full["train"]["train_loss"] == reported.value  # the same figure transformers computes

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        UnifiedProductionTrainer(config(out), callbacks=[Crash(7)]).train()  # 7 updates done, checkpoint-6 kept
    curve_before = (out / "loss_curve.png").exists()
    metrics, paths = UnifiedProductionTrainer(config(out)).train()

    assert metrics["train"]["resumed_from"] == str(out / "checkpoint-6")
    assert not curve_before and paths["loss_curve"].is_file()
    losses = [entry for entry in metrics["history"] if "loss" in entry]
    assert len(losses) == metrics["optimizer_updates"] == 9
    assert [entry["step"] for entry in losses] == list(range(1, 10))  # update 7, redone, counted once
    assert metrics["history"] == full["history"]  # losses and learning rates of every update, bitwise
    assert metrics["train"]["train_loss"] == full["train"]["train_loss"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["history"] == full["history"] and saved["train"]["train_loss"] == full["train"]["train_loss"]
    assert RunReport.from_dict(saved).to_dict() == saved  # a resumed run's report keeps the schema too
