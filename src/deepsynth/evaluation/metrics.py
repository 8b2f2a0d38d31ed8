"""Generated-text metrics: ROUGE-1/2/L (rouge-score), CER (jiwer) and a repetition-loop rate.

rouge-score's default tokenizer keeps only ``[a-z0-9]``, which deletes every accented letter of
French ("été" → "t"); we give it a Unicode word tokenizer instead.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import jiwer
from rouge_score import rouge_scorer

_WORD = re.compile(r"\w+", re.UNICODE)


class UnicodeWordTokenizer:
    """Lower-cased Unicode words; the interface rouge-score expects of a tokenizer."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())


_SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=UnicodeWordTokenizer())


def is_looping(text: str, ngram: int = 3, repeats: int = 3) -> bool:
    """True when some word n-gram occurs ``repeats`` times or more: the OCR models' loop failure."""
    words = UnicodeWordTokenizer().tokenize(text)
    grams = Counter(tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1))
    return any(count >= repeats for count in grams.values())


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1, CER and loop rate of ``predictions`` against ``references``.

    CER is computed per sample and averaged, then capped at 1 per sample so that one looping output
    cannot dominate the mean (upstream reported mean CER above 100%); the loop rate is reported beside it.
    """
    if len(predictions) != len(references):
        raise ValueError(f"predictions: got {len(predictions)}, expected as many as references ({len(references)})")
    if not predictions:
        raise ValueError("predictions: got none, expected at least one")
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "cer": 0.0, "loop_rate": 0.0}
    for prediction, reference in zip(predictions, references):
        scores = _SCORER.score(reference, prediction)
        for key in ("rouge1", "rouge2", "rougeL"):
            sums[key] += scores[key].fmeasure
        sums["cer"] += min(1.0, jiwer.cer(reference, prediction)) if reference else float(bool(prediction))
        sums["loop_rate"] += float(is_looping(prediction))
    return {key: value / len(predictions) for key, value in sums.items()}
