"""Generated-text metrics per task: summaries (ROUGE-1/2/L, CER) and transcriptions (CER, WER), plus a loop rate.

rouge-score's default tokenizer keeps only ``[a-z0-9]``, which deletes every accented letter of
French ("été" → "t"); we give it a Unicode word tokenizer instead.

Transcriptions are scored on normalised text (:func:`normalise_text`), written down so that scores
compare: Unicode NFC (an "é" typed as e + combining accent equals the precomposed one), every run of
whitespace — line breaks included — collapsed to one space, ends stripped. Case and punctuation
count unless ``ignore_case`` / ``ignore_punctuation`` (Unicode categories P*) are set. CER and WER
(jiwer) are computed per sample, capped at 1 and averaged, like the summaries' CER: one looping
output cannot dominate the mean, and the loop rate is reported beside them.
"""

from __future__ import annotations

import re
import unicodedata
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


def _check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"predictions: got {len(predictions)}, expected as many as references ({len(references)})")
    if not predictions:
        raise ValueError("predictions: got none, expected at least one")


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1, CER and loop rate of ``predictions`` against ``references``.

    CER is computed per sample and averaged, then capped at 1 per sample so that one looping output
    cannot dominate the mean (upstream reported mean CER above 100%); the loop rate is reported beside it.
    """
    _check_lengths(predictions, references)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "cer": 0.0, "loop_rate": 0.0}
    for prediction, reference in zip(predictions, references):
        scores = _SCORER.score(reference, prediction)
        for key in ("rouge1", "rouge2", "rougeL"):
            sums[key] += scores[key].fmeasure
        sums["cer"] += min(1.0, jiwer.cer(reference, prediction)) if reference else float(bool(prediction))
        sums["loop_rate"] += float(is_looping(prediction))
    return {key: value / len(predictions) for key, value in sums.items()}


#: The metrics each task reports, in table order (after ``loss``); its headline first.
TASK_METRICS = {
    "summarise": ("rouge1", "rouge2", "rougeL", "cer", "loop_rate"),
    "transcribe": ("cer", "wer", "loop_rate"),
}


def normalise_text(text: str, *, ignore_case: bool = False, ignore_punctuation: bool = False) -> str:
    """``text`` as transcriptions are compared: NFC, whitespace collapsed; optionally lower-cased, unpunctuated."""
    text = unicodedata.normalize("NFC", text)
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        # Punctuation becomes a space, so "fin.Début" still reads as two words.
        text = "".join(" " if unicodedata.category(char).startswith("P") else char for char in text)
    return " ".join(text.split())


def normalisation_words(*, ignore_case: bool = False, ignore_punctuation: bool = False) -> str:
    """How :func:`normalise_text` was set, in words (printed under the before/after table)."""
    kept = [what for what, ignored in (("case", ignore_case), ("punctuation", ignore_punctuation)) if not ignored]
    dropped = [what for what, ignored in (("case", ignore_case), ("punctuation", ignore_punctuation)) if ignored]
    words = "Unicode NFC, whitespace collapsed"
    if dropped:
        words += f", {' and '.join(dropped)} ignored"
    if kept:
        words += f", {' and '.join(kept)} kept"
    return words


def _capped_rate(measure, reference: str, prediction: str) -> float:
    if not reference:
        return float(bool(prediction))
    return min(1.0, measure(reference, prediction))


def transcription_metrics(predictions: Sequence[str], references: Sequence[str], *, ignore_case: bool = False,
                          ignore_punctuation: bool = False) -> dict[str, float]:
    """Mean CER, WER (per sample, capped at 1) and loop rate of ``predictions`` on normalised text."""
    _check_lengths(predictions, references)
    options = {"ignore_case": ignore_case, "ignore_punctuation": ignore_punctuation}
    sums = {"cer": 0.0, "wer": 0.0, "loop_rate": 0.0}
    for prediction, reference in zip(predictions, references):
        prediction, reference = normalise_text(prediction, **options), normalise_text(reference, **options)
        sums["cer"] += _capped_rate(jiwer.cer, reference, prediction)
        sums["wer"] += _capped_rate(jiwer.wer, reference, prediction)
        sums["loop_rate"] += float(is_looping(prediction))
    return {key: value / len(predictions) for key, value in sums.items()}


def task_metrics(task: str, predictions: Sequence[str], references: Sequence[str], *, ignore_case: bool = False,
                 ignore_punctuation: bool = False) -> dict[str, float]:
    """The generated-text metrics of ``task`` (:data:`TASK_METRICS`)."""
    if task == "transcribe":
        return transcription_metrics(predictions, references, ignore_case=ignore_case,
                                     ignore_punctuation=ignore_punctuation)
    if task == "summarise":
        return text_metrics(predictions, references)
    raise ValueError(f"task: got {task!r}, expected one of {', '.join(TASK_METRICS)}")
