"""What a run's steps hand each other (Examples, RunState, Training), and the run on transformers' Trainer: its
arguments, the checkpoint it resumes from, its processes, the digest of what it trained.

The steps themselves are :class:`deepsynth.training.production_trainer.UnifiedProductionTrainer`'s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import TrainingArguments

from deepsynth.training.checkpoints import CheckpointGuard, checkpoint_problem, find_resumable, log_resume_choice
from deepsynth.training.config import TrainerConfig
from deepsynth.training.distributed import sharding_training_arguments, trainable_named_tensors
from deepsynth.training.errors import ConfigError
from deepsynth.training.moe import MoeRegularisation
from deepsynth.training.progress import ProgressWriter
from deepsynth.training.recommend import UpdateEstimate
from deepsynth.training.scheduler import HF_SCHEDULER_NAMES
from deepsynth.training.trainer import MoeTrainer

LOGGER = logging.getLogger("deepsynth")


@dataclass
class Examples:
    """The encoded rows of a run (set by ``setup_examples``)."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    instruction: str  # the prompt's instruction for the task
    lengths: dict[str, Any]  # max_length as set, and the longest example (metrics.json "max_length")


@dataclass
class RunState:
    """Where and how long the run trains, and where it reports (set by ``start_run``)."""

    output_dir: Path
    args: TrainingArguments
    estimate: UpdateEstimate
    progress: ProgressWriter
    resume: Path | None  # the checkpoint resumed from

    @property
    def is_main(self) -> bool:
        return self.args.process_index == 0


@dataclass
class Training:
    """The Trainer of the run and what is installed around it (set by ``setup_trainer``)."""

    trainer: MoeTrainer
    moe: MoeRegularisation
    guard: CheckpointGuard
    feature_cache: dict[str, Any]  # metrics.json "feature_cache"
    seconds: float = 0.0  # of training, this process's segment (set by ``fit``)


def training_arguments(config: TrainerConfig, output_dir: Path, total: int) -> TrainingArguments:
    """transformers' TrainingArguments of a run of ``total`` optimizer updates (checkpoints, evaluation, schedule)."""
    save_every = config.eval_every_updates if config.early_stopping_patience else (
        config.checkpoint_every_updates or max(1, -(-total // 5)))
    early = bool(config.early_stopping_patience)
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=1,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.num_epochs,
        learning_rate=config.optimizer.learning_rate,
        weight_decay=config.optimizer.weight_decay,
        lr_scheduler_type=HF_SCHEDULER_NAMES[config.optimizer.scheduler_type],
        warmup_steps=config.optimizer.resolve_warmup(total),
        logging_steps=1,
        save_strategy="steps",
        save_steps=save_every,
        save_total_limit=None,  # CheckpointGuard rotates: transformers' rotation deletes folders not ours
        eval_strategy="steps" if config.eval_every_updates else "no",
        eval_steps=config.eval_every_updates,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        report_to=["tensorboard"] if importlib.util.find_spec("tensorboard") else "none",
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
        **sharding_training_arguments(),
    )

def checkpoint_to_resume(config: TrainerConfig, output_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The checkpoint to resume from and the ``checkpoint-*`` folders passed over, with the reason.

    "auto" takes the newest complete checkpoint (see ``deepsynth.training.checkpoints``); a
    partial or foreign folder is logged and left alone, never deleted.
    """
    choice = config.resume_from_checkpoint
    if choice in (None, "never"):
        return None, []
    if choice == "auto":
        chosen, skipped = find_resumable(output_dir)
        log_resume_choice(chosen, skipped)
        return chosen, skipped
    path = Path(choice)
    if not (path / "trainer_state.json").is_file():
        raise ConfigError("resume_from_checkpoint", choice, "'auto', 'never' or a checkpoint-* directory")
    problem = checkpoint_problem(path)
    if problem is not None:  # the user's explicit choice: resumed from, with a warning
        LOGGER.warning("resuming from %s as asked, though it may be incomplete: %s", path, problem)
    return path, []


def world_size() -> int:
    """Processes of this run as the Trainer will see them (1 without a launcher)."""
    return PartialState(cpu=not torch.cuda.is_available()).num_processes


def trained_weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the trainable tensors (names, dtypes, shapes, bytes): equal on every DDP rank; with
    sharded weights the tensors are gathered first (every rank must call it)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(trainable_named_tensors(model).items()):
        tensor = tensor.cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
