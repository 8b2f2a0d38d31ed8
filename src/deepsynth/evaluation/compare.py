"""Score a model on held-out samples: teacher-forced loss plus generated-text metrics.

The same function scores the base model (adapter disabled) and the adapted one on the same
samples, which is what the before/after table in ``metrics.json`` compares. A saved adapter
folder is scored through ``deepsynth.evaluation.adapter_folder.evaluate_adapter``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from deepsynth.data.collate import DataCollator, build_generation_inputs
from deepsynth.evaluation.metrics import text_metrics

METRIC_NAMES = ("loss", "rouge1", "rouge2", "rougeL", "cer", "loop_rate")


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def generate_text(
    model: torch.nn.Module,
    processor: Any,
    source: Any,
    *,
    instruction: str,
    max_new_tokens: int,
    no_repeat_ngram_size: int,
) -> str:
    """Greedy generation for one page (OCR families) or text (causal LMs), with the repetition guard."""
    tokenizer = getattr(processor, "tokenizer", processor)
    device = next(model.parameters()).device
    inputs = _to_device(build_generation_inputs(processor, source, instruction, dtype=model.dtype), device)
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        no_repeat_ngram_size=no_repeat_ngram_size or None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    return tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    processor: Any,
    examples: Sequence[dict[str, Any]],
    sources: Sequence[Any],
    references: Sequence[str],
    *,
    instruction: str,
    max_new_tokens: int,
    no_repeat_ngram_size: int,
    adapter_disabled: bool = False,
) -> tuple[dict[str, float], list[str]]:
    """Mean loss over ``examples`` and text metrics of generations from ``sources`` vs ``references``.

    With ``adapter_disabled`` a PEFT model is scored as its base model. Returns (metrics, predictions).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = DataCollator(processor, dtype=model.dtype)
    context = model.disable_adapter() if adapter_disabled else nullcontext()
    try:
        with context:
            losses = [float(model(**_to_device(collate([example]), device)).loss) for example in examples]
            predictions = [
                generate_text(model, processor, source, instruction=instruction, max_new_tokens=max_new_tokens,
                              no_repeat_ngram_size=no_repeat_ngram_size)
                for source in sources
            ]
    finally:
        model.train(was_training)
    metrics = {"loss": sum(losses) / len(losses), **text_metrics(predictions, references)}
    return metrics, predictions
