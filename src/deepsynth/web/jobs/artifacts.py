"""What a job's folder holds, read for the API: its adapter, checkpoints, metrics, progress history and log."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from deepsynth.training.progress import Eval, Log, Phase, read_events, typed_events

CHECKPOINT_MARKER = "deepsynth-complete.json"  # deepsynth.training.checkpoints.MARKER (that module imports torch)


def adapter_folder(output: Path) -> tuple[Path, str] | None:
    """The run's adapter and its kind: the final one ("final"), else the newest complete checkpoint
    ("checkpoint"); None when there is neither yet."""
    if (output / "adapter_config.json").is_file():
        return output, "final"
    finals = [p.parent for p in output.glob("*/adapter_config.json") if not p.parent.name.startswith("checkpoint-")]
    if finals:
        return max(finals, key=lambda p: p.stat().st_mtime), "final"
    from deepsynth.training.checkpoints import find_resumable  # torch: imported only when asked

    # The trainer's own choice (what a resumed run starts from): one a crash cut mid-write has no marker.
    checkpoint = find_resumable(output)[0]
    return None if checkpoint is None else (checkpoint, "checkpoint")


def has_adapter(output: Path) -> bool:
    return (output / "adapter_config.json").is_file() or any(output.glob("*/adapter_config.json"))


def has_marked_checkpoint(output: Path) -> bool:
    """A checkpoint with a completion marker (what the UI's Resume button needs; resuming checks it in full)."""
    return any(output.glob(f"checkpoint-*/{CHECKPOINT_MARKER}"))


def read_metrics(output: Path) -> dict[str, Any] | None:
    """The run's ``metrics.json`` (None: not written yet, or unreadable)."""
    try:
        data = json.loads((output / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def progress_history(output: Path) -> dict[str, list]:
    """The loss and eval-loss history and the phases of the run, from its ``progress.jsonl``."""
    events = typed_events(read_events(output / "progress.jsonl")[0])
    return {
        "loss_history": [{"step": e.step, "epoch": e.epoch, "loss": e.loss, "learning_rate": e.learning_rate}
                         for e in events if isinstance(e, Log)],
        "eval_history": [{"step": e.step, "eval_loss": e.eval_loss} for e in events if isinstance(e, Eval)],
        "phases": [e.name for e in events if isinstance(e, Phase)],
    }


def log_tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of the log (of its last 64 KiB)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:]
