"""The trainer's console output stays readable: a bounded number of loss lines per run."""

from __future__ import annotations

from transformers import TrainerControl, TrainerState, TrainingArguments

from deepsynth.training.trainer import SparseProgressCallback


def test_sparse_progress_prints_about_ten_loss_lines_and_every_eval(tmp_path, capsys):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    state, control = TrainerState(), TrainerControl()
    state.max_steps, state.is_world_process_zero = 175, True
    callback = SparseProgressCallback(lines=10)
    callback.on_train_begin(args, state, control)
    for step in range(1, 176):
        state.global_step = step
        callback.on_log(args, state, control, logs={"loss": 1.0 / step, "learning_rate": 1e-3})
        if step % 50 == 0:
            callback.on_log(args, state, control, logs={"eval_loss": 0.5})
    callback.on_train_end(args, state, control)
    out = capsys.readouterr().out
    loss_lines = [line for line in out.splitlines() if "'loss'" in line]
    assert 10 <= len(loss_lines) <= 12  # every 17th update and the last one, not 175
    assert "'loss': '0.005714'" in loss_lines[-1]  # the final update is always shown
    assert sum("'eval_loss'" in line for line in out.splitlines()) == 3
