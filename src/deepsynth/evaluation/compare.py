"""Evaluate a model on held-out samples: teacher-forced loss plus generated-text metrics.

The same function scores the base model (adapter disabled) and the adapted one on the same
samples, which is what the before/after table in ``metrics.json`` compares.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
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


def evaluate_adapter(
    adapter_dir: str | Path, data: str | Path | None = None, *, max_samples: int | None = None
) -> dict[str, Any]:
    """Before/after metrics of the adapter in ``adapter_dir`` on ``data`` (default: bundled eval samples)."""
    from deepsynth.data import load_documents, load_sample_dataset
    from deepsynth.data.collate import DEFAULT_SUMMARY_INSTRUCTION, build_example
    from deepsynth.models.adapters import load_adapted_model

    adapted = load_adapted_model(adapter_dir)
    settings = adapted.training_config
    rows = load_sample_dataset("eval", max_samples=max_samples) if data is None else load_documents(
        data, column_mapping=settings.get("column_mapping"), max_samples=max_samples)
    processor = adapted.loaded.processor
    instruction = settings.get("instruction") or DEFAULT_SUMMARY_INSTRUCTION
    sources = list(rows["image"] if adapted.loaded.is_multimodal else rows["text"])
    examples = [build_example(processor, source, target, instruction=instruction,
                              max_length=settings.get("max_length", 2048))
                for source, target in zip(sources, rows["summary"])]
    kwargs = dict(sources=sources, references=list(rows["summary"]), instruction=instruction,
                  max_new_tokens=settings.get("max_new_tokens", 96),
                  no_repeat_ngram_size=settings.get("no_repeat_ngram_size", 6))
    before, _ = evaluate_model(adapted.model, processor, examples, adapter_disabled=True, **kwargs)
    after, _ = evaluate_model(adapted.model, processor, examples, **kwargs)
    return {"num_eval_samples": len(rows), "eval_on_training_data": False,
            "eval": {"before": before, "after": after}}


def generate_from_adapter(
    adapter_dir: str | Path, *, image: str | Path | None = None, text: str | None = None,
    max_new_tokens: int | None = None,
) -> str:
    """Generate with the adapter in ``adapter_dir`` from a page image or a text.

    OCR-family models read pages: a text is rendered to a page first, as in training.
    """
    from PIL import Image

    from deepsynth.data import render_document
    from deepsynth.data.collate import DEFAULT_SUMMARY_INSTRUCTION
    from deepsynth.models.adapters import load_adapted_model

    if (image is None) == (text is None):
        raise ValueError("generate: give exactly one of image or text")
    adapted = load_adapted_model(adapter_dir)
    settings = adapted.training_config
    if adapted.loaded.is_multimodal:
        source = Image.open(image).convert("RGB") if image is not None else render_document(text)
    elif text is None:
        raise ValueError(f"generate: {adapted.loaded.name} is a text model; give text, not an image")
    else:
        source = text
    return generate_text(
        adapted.model, adapted.loaded.processor, source,
        instruction=settings.get("instruction") or DEFAULT_SUMMARY_INSTRUCTION,
        max_new_tokens=max_new_tokens or settings.get("max_new_tokens", 96),
        no_repeat_ngram_size=settings.get("no_repeat_ngram_size", 6),
    )
