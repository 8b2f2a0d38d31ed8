"""How the ``deepsynth`` commands print: tables, numbers, JSON, before/after metrics and sample generations."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    return str(value)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def metrics_table(metrics: dict[str, Any]) -> str:
    before, after = metrics["eval"]["before"], metrics["eval"]["after"]
    rows = [(name, f"{before[name]:.4f}", f"{after[name]:.4f}", f"{after[name] - before[name]:+.4f}") for name in before]
    where = "training samples (no held-out data)" if metrics["eval_on_training_data"] else "held-out samples"
    scored = f"Scored: {metrics['scored_rows']}\n" if metrics.get("scored_rows") else ""
    text = f"{scored}Before/after on {metrics['num_eval_samples']} {where}:\n" + table(
        rows, ("metric", "base", "adapted", "change"))
    if metrics.get("text_normalisation"):  # transcription: say how CER and WER compared the texts
        text += f"\nCER and WER on normalised text: {metrics['text_normalisation']}"
    return text


def samples_text(samples: Sequence[dict[str, Any]]) -> str:
    """The shown generations of an evaluation, each with how it ended (an empty one says so)."""
    lines = [f"First {len(samples)} samples (how each generation ended in brackets):"]
    for number, sample in enumerate(samples, 1):
        lines.append(f"{number}. reference: {_short(sample['reference'])}")
        for key, label in (("before", "base"), ("after", "adapted")):
            stop = sample.get(f"{key}_stop")
            lines.append(f"   {label}: {_short(sample[key]) or '(nothing)'}" + (f" [{stop}]" if stop else ""))
    return "\n".join(lines)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
