"""Learning-rate schedules with warmup, counted in optimizer updates.

The seed's two functions keep their signatures; the implementations are transformers' own.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_constant_schedule, get_constant_schedule_with_warmup
from transformers import get_cosine_schedule_with_warmup as _hf_cosine
from transformers import get_linear_schedule_with_warmup as _hf_linear

from deepsynth.training.config import SCHEDULER_TYPES
from deepsynth.training.errors import ConfigError

# Our scheduler_type → transformers' ``lr_scheduler_type`` (what TrainingArguments takes).
HF_SCHEDULER_NAMES = {
    "cosine": "cosine",
    "linear": "linear",
    "constant": "constant_with_warmup",
    "none": "constant",
}


def get_linear_schedule_with_warmup(
    optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int, last_epoch: int = -1
) -> LambdaLR:
    """Linear warmup from 0 to the base LR, then linear decay to 0 at ``num_training_steps``."""
    return _hf_linear(optimizer, num_warmup_steps, num_training_steps, last_epoch=last_epoch)


def get_cosine_schedule_with_warmup(
    optimizer: Optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    num_cycles: float = 0.5,
    last_epoch: int = -1,
) -> LambdaLR:
    """Linear warmup, then cosine decay (half a cycle by default) to 0 at ``num_training_steps``."""
    return _hf_cosine(optimizer, num_warmup_steps, num_training_steps, num_cycles=num_cycles, last_epoch=last_epoch)


def build_scheduler(
    optimizer: Optimizer, scheduler_type: str, num_warmup_steps: int, num_training_steps: int
) -> LambdaLR:
    """The schedule named ``scheduler_type`` (cosine, linear, constant = constant after warmup, none)."""
    if scheduler_type == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps)
    if scheduler_type == "linear":
        return get_linear_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps)
    if scheduler_type == "constant":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps)
    if scheduler_type == "none":
        return get_constant_schedule(optimizer)
    raise ConfigError("scheduler_type", scheduler_type, f"one of {', '.join(SCHEDULER_TYPES)}")
