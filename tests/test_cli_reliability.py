"""`deepsynth train` at its start: a bad --output-dir and a full disk give one `error:` line, never a traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from pathlib import Path

import pytest

from deepsynth.cli import main

TINY_RUN = ["--max-train-samples", "2", "--max-eval-samples", "1", "--epochs", "1", "--grad-accum", "1",
            "--batch-size", "1", "--max-new-tokens", "1", "--preset", "tiny_data"]


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("where", ["file", "under_file", "too_long"])
def test_an_output_dir_that_cannot_be_a_folder_is_refused_before_the_model_loads(tmp_path, capsys, where):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me\n")
    target = {"file": existing, "under_file": existing / "run", "too_long": tmp_path / ("x" * 300) / "run"}[where]
    # --dry-run loads no model: the refusal must come from the plan's own checks, before any loading.
    code = main(["train", *TINY_RUN, "--output-dir", str(target), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 2, captured.out + captured.err
    assert "Traceback" not in captured.err
    errors = _error_lines(captured.err)
    assert len(errors) == 1 and errors[0].startswith("error: --output-dir: "), captured.err
    assert str(target) in errors[0]
    assert existing.read_text() == "keep me\n"  # nothing written over, nothing half-made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


class SmallDisk:
    """A real tmpfs (CI runs as root); tests needing one are skipped where mounting is not allowed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mount(self, size: int) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.path)],
                           check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            pytest.skip("mounting a tmpfs is not permitted here")

    def fill(self, leave: int) -> None:
        """Write a ballast file until at most ``leave`` + 4 KB are free (``leave`` 0: until ENOSPC)."""
        with open(self.path / "ballast", "ab") as stream:
            try:
                while shutil_free(self.path) > leave:
                    stream.write(b"\0" * 4096)
                    stream.flush()
            except OSError as error:
                assert error.errno == errno.ENOSPC

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)


def shutil_free(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


@pytest.fixture
def small_disk(tmp_path):
    disk = SmallDisk(tmp_path / "disk")
    yield disk
    disk.unmount()


# 0 KB: the first progress event cannot be written; 8 KB: it can, but TensorBoard's writer thread
# fails on its event file (it printed a thread traceback before the run's own error).
@pytest.mark.parametrize("leave_kb", [0, 8])
def test_disk_full_at_training_start_is_one_error_line(small_disk, capfd, monkeypatch, leave_kb):
    # What a real process does with a thread's exception (pytest's own hook would hide it).
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    small_disk.mount(1 << 20)
    small_disk.fill(leave=leave_kb * 1024)
    out = small_disk.path / "out"
    code = main(["train", *TINY_RUN, "--output-dir", str(out)])
    err = capfd.readouterr().err
    assert code == 1, err[-3000:]
    assert "Traceback" not in err and "Exception in thread" not in err, err[-3000:]
    errors = _error_lines(err)
    assert len(errors) == 1 and errors[0].startswith("error: disk full"), err[-3000:]
    assert str(out) in errors[0] and "free some space" in errors[0]
    assert not list(out.glob("checkpoint-*")) and not (out / "adapter_model.safetensors").exists()
