"""Crash-safe checkpoints: completion markers, resume choice, rotation, disk-space checks, staged final save.

transformers' ``Trainer`` writes ``checkpoint-N`` in place, file after file, and its resume helper
(``get_last_checkpoint``) takes the folder with the highest number whatever it holds, so a folder
left half-written by a crash (or any stray ``checkpoint-999``) blocks auto-resume for good. It has no
notion of a complete checkpoint, so DeepSynth adds one:

* :class:`CheckpointGuard` (a ``TrainerCallback``) writes :data:`MARKER` into a checkpoint folder
  after transformers finished it and every file was fsynced; the marker lists each file's size.
  A folder without a valid marker is never resumed from, never counted and never deleted by us.
* The same callback replaces transformers' rotation (which deletes by mtime any ``checkpoint-*``
  folder, ours or not): it deletes only complete checkpoints it can prove DeepSynth wrote.
* Before each save it checks the free space against the size the checkpoint will take, and it turns
  a write that fails for lack of space into one :class:`DiskFullError` (torch reports ENOSPC as
  ``RuntimeError: ... unexpected pos``), removing the partial folder it created.
* :func:`staged_save` writes the final adapter folder beside the old one and moves it into place only
  when every file was written, so a failed save leaves a finished adapter, its metrics and its model
  card untouched.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from deepsynth.training.errors import DiskFullError

LOGGER = logging.getLogger("deepsynth")

MARKER = "deepsynth-complete.json"
MARKER_FORMAT = 1
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
# The final adapter is written here (inside the output dir, same filesystem, so the move into place is
# a rename). Two levels deep so that nothing globbing ``OUT/*/adapter_config.json`` mistakes it for an adapter.
STAGING_DIR = ".deepsynth-staging"
DELETING = ".deleting"  # suffix of a checkpoint of ours being deleted (see remove_checkpoint)
# Room for what grows between saves (trainer_state.json, logs) and for files the estimate misses.
SPACE_MARGIN = 1 << 20


# --- completeness and resume ------------------------------------------------------------------------

def checkpoint_step(folder: Path) -> int | None:
    match = CHECKPOINT_NAME.match(folder.name)
    return int(match.group(1)) if match else None


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a complete DeepSynth checkpoint (None when it is one)."""
    marker = folder / MARKER
    if not marker.is_file():
        return (f"no {MARKER}: its writing was interrupted (a crash or a kill during the save) "
                "or DeepSynth did not write it")
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        files = record["files"]
        step = record["step"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"unreadable {MARKER} ({error})"
    if not isinstance(files, dict):
        return f"unreadable {MARKER} (no file list)"
    if step != checkpoint_step(folder):
        return f"{MARKER} describes step {step}, not this folder's"
    if "trainer_state.json" not in files:
        return "its completion marker lists no trainer_state.json"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} when it was written"
    return None


def find_resumable(output_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint in ``output_dir`` and, for every other ``checkpoint-N``, why not it."""
    if not output_dir.is_dir():
        return None, []
    folders = sorted((p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None),
                     key=checkpoint_step, reverse=True)
    chosen: Path | None = None
    skipped: list[tuple[Path, str]] = []
    for folder in folders:
        if chosen is not None:
            skipped.append((folder, f"older than {chosen.name}"))
            continue
        problem = checkpoint_problem(folder)
        if problem is None:
            chosen = folder
        else:
            skipped.append((folder, f"incomplete: {problem}"))
    return chosen, skipped


def log_resume_choice(chosen: Path | None, skipped: list[tuple[Path, str]]) -> None:
    for folder, reason in skipped:
        LOGGER.log(logging.INFO if reason.startswith("older") else logging.WARNING,
                   "not resuming from %s: %s (left as it is)", folder, reason)
    if chosen is not None:
        LOGGER.info("resuming from %s: the newest complete checkpoint", chosen)
    elif skipped:
        LOGGER.warning("no complete checkpoint in %s: training starts from the beginning", skipped[0][0].parent)


# --- durable writes -------------------------------------------------------------------------------

def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file or a folder's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_marker(folder: Path, step: int) -> None:
    """fsync every file of ``folder``, then write the marker (write, fsync, rename, fsync the folder)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in (MARKER, MARKER + ".tmp"):
            fsync_path(path)
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
    fsync_path(folder)
    partial = folder / (MARKER + ".tmp")
    with partial.open("w", encoding="utf-8") as stream:
        json.dump({"format": MARKER_FORMAT, "step": step, "files": files}, stream, indent=1)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(partial, folder / MARKER)
    fsync_path(folder)


def remove_checkpoint(folder: Path) -> None:
    """Delete a checkpoint of ours: renamed out of the ``checkpoint-N`` namespace first (atomic), so a
    crash mid-way leaves a ``.checkpoint-N.deleting`` folder that the next rotation sweeps, never a
    half-deleted ``checkpoint-N``."""
    doomed = folder.with_name(f".{folder.name}{DELETING}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(folder, doomed)
    fsync_path(folder.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --- disk space -----------------------------------------------------------------------------------

def _existing(path: Path) -> Path:
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    return shutil.disk_usage(_existing(path)).free


def no_free_inodes(path: Path) -> bool:
    """Whether the filesystem of ``path`` ran out of file entries (also reported as ENOSPC)."""
    stats = os.statvfs(_existing(path))
    return stats.f_files > 0 and stats.f_favail == 0


def model_save_bytes(model: torch.nn.Module) -> int:
    """Bytes ``save_pretrained`` writes: the trainable tensors of a PEFT model, else every tensor."""
    peft = hasattr(model, "peft_config")
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad or not peft)


def checkpoint_bytes_estimate(model: torch.nn.Module) -> int:
    """A checkpoint: the saved weights plus AdamW's two fp32 moments per trainable parameter."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model_save_bytes(model) + 8 * trainable + SPACE_MARGIN


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or one it came from) says the disk or the quota is full."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(current)
        # safetensors (Rust) and tokenizers report the OS error in their message only.
        if "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text:
            return True
        current = current.__cause__ or current.__context__
    return False


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def disk_full(what: str, path: Path, needed: int, cause: str | None = None) -> DiskFullError:
    free = free_bytes(path)
    inodes = " but no free inodes (file entries)" if no_free_inodes(path) else ""
    detail = f" ({cause})" if cause else ""
    return DiskFullError(
        f"disk full: {what} in {path} needs about {_mb(needed)}, {_mb(free)} free{inodes}{detail}; "
        "nothing partial was kept: free some space and rerun the same command",
        path=path, needed=needed, free=free)


# --- the callback ---------------------------------------------------------------------------------

class CheckpointGuard(TrainerCallback):
    """Marks complete checkpoints, rotates only those, checks free space, cleans up a failed save.

    ``save_total_limit``: complete checkpoints kept (None: all); transformers' own rotation must be
    off (``TrainingArguments.save_total_limit=None``), since it deletes folders that are not ours.
    """

    def __init__(self, output_dir: Path, save_total_limit: int | None, estimate: int) -> None:
        self.output_dir = Path(output_dir)
        self.save_total_limit = save_total_limit
        self.estimate = estimate
        self.saving: Path | None = None  # the checkpoint folder being written, until it is complete
        self.created = False  # whether this save created that folder (only then may a failure remove it)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: D102 (TrainerCallback API)
        if not (control.should_save and args.should_save):
            return
        folder = self.output_dir / f"checkpoint-{state.global_step}"
        needed = self.estimate
        free = free_bytes(self.output_dir)
        if free < needed:
            raise disk_full(f"saving {folder.name}", self.output_dir, needed)
        self.saving, self.created = folder, not folder.exists()
        if (folder / MARKER).exists():  # rewritten in place (e.g. an explicit older --resume)
            (folder / MARKER).unlink()
            fsync_path(folder)

    def on_save(self, args, state, control, **kwargs):  # noqa: D102 (TrainerCallback API)
        from accelerate import PartialState

        PartialState().wait_for_everyone()  # every rank's files (rng_state_N.pth) are in the folder
        if not args.should_save:
            return
        folder = self.output_dir / f"checkpoint-{state.global_step}"
        write_marker(folder, state.global_step)
        # The next estimate is this checkpoint's real size (plus room for what grows).
        self.estimate = folder_bytes(folder) + SPACE_MARGIN
        self.saving = None
        self.rotate(state.best_model_checkpoint)

    def rotate(self, best: str | None) -> None:
        """Delete the oldest complete checkpoints beyond the limit; keep the best one and the newest."""
        if not self.save_total_limit or self.save_total_limit <= 0:
            return
        for leftover in self.output_dir.glob(f".checkpoint-*{DELETING}"):  # a deletion a crash interrupted
            shutil.rmtree(leftover, ignore_errors=True)
        complete = sorted((p for p in self.output_dir.iterdir()
                           if p.is_dir() and checkpoint_step(p) is not None and checkpoint_problem(p) is None),
                          key=checkpoint_step)
        # By name: transformers may spell the output folder differently (absolute, trailing slash).
        protected = {complete[-1].name} if complete else set()
        if best:
            protected.add(Path(best).name)
        keep = max(self.save_total_limit, len(protected))
        for folder in complete[: max(0, len(complete) - keep)]:
            if folder.name not in protected:
                remove_checkpoint(folder)

    def failure(self, error: BaseException) -> BaseException:
        """The error to report for ``error`` raised by training; removes a partial checkpoint of ours."""
        folder, self.saving = self.saving, None
        reported = error
        if not isinstance(error, DiskFullError) and (is_disk_full(error) or self._save_failed_for_space(folder)):
            what = f"saving {folder.name}" if folder is not None else "writing training progress"
            # Measured now, as it failed: the cleanup below frees some space.
            reported = disk_full(what, self.output_dir, self.estimate, cause=_first_line(error))
        if folder is not None and self.created and folder.exists() and not (folder / MARKER).exists():
            shutil.rmtree(folder, ignore_errors=True)
            LOGGER.warning("removed the partial %s (its save failed)", folder)
        return reported

    def _save_failed_for_space(self, folder: Path | None) -> bool:
        # torch.save reports ENOSPC as "RuntimeError: [enforce fail at inline_container.cc] unexpected pos":
        # a save that failed while too little space is left is taken for what it is.
        return folder is not None and free_bytes(self.output_dir) < self.estimate


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


# --- the final save ---------------------------------------------------------------------------------

def staged_save(output_dir: Path, write: Callable[[Path], Any], needed: int) -> Any:
    """Run ``write(folder)`` into a staging folder, then move each file it wrote into ``output_dir``.

    A failure while writing (disk full included) leaves ``output_dir`` as it was: a finished adapter,
    its metrics and its model card stay together. Returns what ``write`` returned.
    """
    staging = output_dir / STAGING_DIR / "final"
    shutil.rmtree(output_dir / STAGING_DIR, ignore_errors=True)  # a previous run's interrupted save
    if free_bytes(output_dir) < needed:
        raise disk_full("writing the final adapter", output_dir, needed)
    try:
        staging.mkdir(parents=True)
        result = write(staging)
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        for path in files:
            fsync_path(path)
    except Exception as error:
        full = disk_full("writing the final adapter", output_dir, needed, cause=_first_line(error)) \
            if is_disk_full(error) else None  # the space as it failed, before the cleanup frees some
        shutil.rmtree(output_dir / STAGING_DIR, ignore_errors=True)
        if full is not None:
            raise full from error
        raise
    # Renames need no space: from here on the new files replace the old ones one by one.
    for path in files:
        target = output_dir / path.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    fsync_path(output_dir)
    shutil.rmtree(output_dir / STAGING_DIR, ignore_errors=True)
    return result


# --- the whole run's history ------------------------------------------------------------------------

def run_history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Loss and held-out-loss entries of the whole run from ``TrainerState.log_history``.

    transformers saves the state (with every logged entry) in each checkpoint and reloads it on
    resume, so after a resume it covers the earlier segments too, without the updates redone.
    """
    history = []
    for logs in log_history:
        if "loss" in logs:
            entry = {"step": logs["step"], "epoch": round(logs.get("epoch") or 0.0, 4), "loss": float(logs["loss"]),
                     "learning_rate": float(logs.get("learning_rate", 0.0))}
            if "aux_loss" in logs:
                entry["aux_loss"] = float(logs["aux_loss"])
            history.append(entry)
        if "eval_loss" in logs:
            history.append({"step": logs["step"], "eval_loss": float(logs["eval_loss"])})
    return history


def run_train_loss(history: list[dict[str, Any]], updates: int) -> float:
    """Mean training loss per update over the whole run, summed in the order transformers sums it.

    With one log entry per update (``logging_steps=1``) each entry is that update's loss, so an
    uninterrupted run gets exactly transformers' ``train_loss``; a resumed run gets the whole run's.
    """
    total = 0.0
    for entry in history:
        if "loss" in entry:
            total += entry["loss"]
    return total / max(updates, 1)
