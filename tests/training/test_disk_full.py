"""A full disk: one clear error naming the folder and the space, nothing partial, nothing finished lost.

The disk is a real small tmpfs (CI runs as root); where mounting is not permitted (or with
``DEEPSYNTH_TEST_NO_MOUNT=1``) the same tests inject ``OSError(ENOSPC)`` at the library write call instead.
"""

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from deepsynth.cli import main
from deepsynth.publishing.model_card import CARD_MARKER
from deepsynth.training.checkpoints import STAGING_DIR, checkpoint_problem
from deepsynth.training.config import TrainerConfig
from deepsynth.training.errors import DiskFullError
from deepsynth.training.production_trainer import UnifiedProductionTrainer

MiB = 1 << 20


class SmallDisk:
    """A tmpfs mounted on ``path`` (``mounted`` False where this process may not mount)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounted = False

    def mount(self, size: int) -> bool:
        self.path.mkdir(parents=True, exist_ok=True)
        if os.environ.get("DEEPSYNTH_TEST_NO_MOUNT"):  # to run the fallback where mounting works
            return False
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.path)],
                           check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return False
        self.mounted = True
        return True

    def remount(self, **options: int) -> None:
        settings = ",".join(f"{key}={value}" for key, value in options.items())
        subprocess.run(["mount", "-o", f"remount,{settings}", str(self.path)], check=True, capture_output=True)

    def inodes_used(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_files - stats.f_ffree

    def fill(self, leave: int) -> None:
        """Write a ballast file until about ``leave`` bytes are free (a real full disk)."""
        with open(self.path / "ballast", "ab") as stream:
            chunk = b"\0" * (64 << 10)
            try:
                while os.statvfs(self.path).f_bavail * os.statvfs(self.path).f_frsize > leave + len(chunk):
                    stream.write(chunk)
                    stream.flush()
            except OSError as error:
                assert error.errno == errno.ENOSPC

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)


@pytest.fixture
def disk(tmp_path):
    small = SmallDisk(tmp_path / "disk")
    yield small
    small.unmount()


def fail_torch_save_into(monkeypatch, folder_name: str) -> None:
    """Fallback without tmpfs: the optimizer-state write into ``folder_name`` fails with ENOSPC."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if folder_name in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]


def assert_only_complete_checkpoints(out: Path) -> list[str]:
    names = sorted(p.name for p in out.glob("checkpoint-*"))
    for name in names:
        assert checkpoint_problem(out / name) is None, name
    return names


def test_cli_disk_full_at_a_checkpoint_is_one_error_line_and_the_rerun_resumes(disk, tmp_path, monkeypatch, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"checkpoint_every_updates": 1, "save_total_limit": 5}))
    out = disk.path / "out"
    argv = ["train", "--config", str(config), "--max-train-samples", "3", "--max-eval-samples", "1", "--epochs", "2",
            "--grad-accum", "1", "--max-new-tokens", "1", "--preset", "tiny_data", "--output-dir", str(out)]
    if not disk.mount(3 * MiB):  # room for one checkpoint (~1.1 MB) but not for the next one's estimate
        fail_torch_save_into(monkeypatch, "checkpoint-2")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"error: disk full: saving checkpoint-2 in {out} needs about ")
    assert " MB free" in errors[0]
    assert assert_only_complete_checkpoints(out) == ["checkpoint-1"]
    last = events(out)[-1]
    assert last["event"] == "error" and last["kind"] == "disk_full" and last["path"] == str(out)
    if disk.mounted:
        assert last["needed_bytes"] > last["free_bytes"]
        disk.remount(size=40 * MiB)  # the user frees space and reruns the same command
    else:
        monkeypatch.undo()
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["resumed_from"] == str(out / "checkpoint-1")
    assert metrics["optimizer_updates"] == 6 and len([h for h in metrics["history"] if "loss" in h]) == 6


class FillDiskAt(TrainerCallback):
    """Fills the disk right before the save of update ``step`` (after DeepSynth checked the free space)."""

    def __init__(self, disk: SmallDisk, step: int) -> None:
        self.disk, self.step = disk, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.disk.fill(leave=64 << 10)


def test_enospc_while_writing_a_checkpoint_removes_the_partial_folder(disk, tmp_path, monkeypatch):
    out = disk.path / "out"
    config = TrainerConfig.from_dict(dict(
        output_dir=str(out), batch_size=1, num_epochs=2, gradient_accumulation_steps=1, max_train_samples=3,
        max_eval_samples=1, max_new_tokens=1, preset="tiny_data", checkpoint_every_updates=1, save_total_limit=5))
    callbacks = []
    if disk.mount(12 * MiB):
        callbacks.append(FillDiskAt(disk, 3))
    else:
        fail_torch_save_into(monkeypatch, "checkpoint-3")
    with pytest.raises(DiskFullError) as caught:
        UnifiedProductionTrainer(config, callbacks=callbacks).train()
    message = str(caught.value)
    assert message.startswith(f"disk full: saving checkpoint-3 in {out} needs about ") and "\n" not in message
    assert caught.value.errno == errno.ENOSPC
    if disk.mounted:  # measured as the write failed, before the partial folder was removed
        assert caught.value.free < 200_000 < caught.value.needed
    assert "No space left on device" in message  # the write itself failed (the space check had passed)
    assert assert_only_complete_checkpoints(out) == ["checkpoint-1", "checkpoint-2"]  # no partial checkpoint-3
    last = events(out)[-1]
    assert last["event"] == "error" and last["kind"] == "disk_full" and last["message"] == message


def test_disk_full_during_the_final_save_keeps_the_finished_adapter_card_and_metrics(disk, tmp_path, monkeypatch):
    out = disk.path / "out"
    config = TrainerConfig.from_dict(dict(
        output_dir=str(out), batch_size=1, num_epochs=2, gradient_accumulation_steps=1, max_train_samples=3,
        max_eval_samples=1, max_new_tokens=1, preset="tiny_data", checkpoint_every_updates=3, save_total_limit=1,
        resume_from_checkpoint="auto"))
    mounted = disk.mount(16 * MiB)
    UnifiedProductionTrainer(config).train()
    finished = {name: (out / name).read_bytes()
                for name in ("README.md", "metrics.json", "adapter_model.safetensors", "adapter_config.json")}
    assert CARD_MARKER.encode() in finished["README.md"]
    if mounted:
        # Room for a few more files only: the rerun gets a real ENOSPC in the middle of the final save.
        disk.remount(nr_inodes=disk.inodes_used() + 5)
    else:
        from transformers.processing_utils import ProcessorMixin

        def no_space(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(ProcessorMixin, "save_pretrained", no_space)
    with pytest.raises(DiskFullError) as caught:
        UnifiedProductionTrainer(config).train()  # resumes from the final checkpoint, then saves again
    message = str(caught.value)
    assert message.startswith(f"disk full: writing the final adapter in {out} needs about ")
    assert "No space left on device" in message and ("no free inodes" in message) == mounted
    for name, content in finished.items():
        assert (out / name).read_bytes() == content, f"{name} changed"
    assert not (out / STAGING_DIR).exists()
    assert assert_only_complete_checkpoints(out) == ["checkpoint-6"]
