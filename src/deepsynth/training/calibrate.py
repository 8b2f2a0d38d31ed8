"""Measure training speed on this machine, so time estimates come from measurement, not guesses."""

from __future__ import annotations

import statistics
import time

import torch

from deepsynth.data import load_sample_dataset
from deepsynth.data.collate import DEFAULT_SUMMARY_INSTRUCTION, DataCollator, encode_rows
from deepsynth.models.loading import load_model_and_processor
from deepsynth.training.lora_config import AdapterSettings
from deepsynth.training.targets import apply_lora, resolve_targets


def measure_seconds_per_step(
    model_name: str | None, lora: AdapterSettings, batch_size: int, *, steps: int = 3, max_length: int = 2048
) -> float:
    """Median wall time of one forward + backward + AdamW step of ``model_name`` with ``lora``.

    Runs on the bundled samples, after one untimed warm-up step (allocations, kernel selection).
    """
    loaded = load_model_and_processor(model_name)
    model = apply_lora(loaded.model, resolve_targets(loaded.model, lora, loaded.family))
    model.train()
    examples = encode_rows(load_sample_dataset("train", max_samples=batch_size), loaded.processor,
                           instruction=DEFAULT_SUMMARY_INSTRUCTION, max_length=max_length)
    device = next(model.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in DataCollator(loaded.processor)(examples).items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    timings = []
    for step in range(steps + 1):
        started = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step warms up
            timings.append(time.perf_counter() - started)
    return statistics.median(timings)
