"""Which rows a run trains on and which it is scored on: eval data, an ``eval`` split, or a seeded hold-out.

Plain numbers in (counts, a seed), datasets out: nothing here reads a TrainerConfig, so ``data/``
never imports ``training/``. The trainer and the planner (:mod:`deepsynth.training.plan`) both call
:func:`load_splits`, so the rows a plan counts are the rows the run uses.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import datasets

from deepsynth.data.loading import DocumentSplits, load_documents, load_sample_dataset
from deepsynth.data.table import DataError
from deepsynth.data.pdf import DEFAULT_PAGE_SIZE, PageSize
from deepsynth.data.transcription import load_transcription_samples
from deepsynth.errors import ConfigError

#: Where the eval rows of a run come from.
EVAL_DATA, EVAL_SPLIT, HOLDOUT, TRAINING_DATA = "eval_data", "eval_split", "holdout", "training_data"


@dataclass
class PreparedData:
    """Training and evaluation rows of a run.

    ``held_out_indices``: rows of the loaded training data held out for evaluation (never trained
    on) because no eval data was given and a hold-out was asked for; empty otherwise. ``eval_from``
    says where the eval rows come from (one of the constants above); ``no_eval_split`` says why the
    source gave no ``eval`` rows when they were looked for (None otherwise).
    """

    train: datasets.Dataset
    eval: datasets.Dataset
    eval_on_training_data: bool
    held_out_indices: list[int] = field(default_factory=list)
    eval_from: str = EVAL_DATA
    no_eval_split: str | None = None


def split_holdout(rows: datasets.Dataset, count: int, seed: int) -> tuple[datasets.Dataset, datasets.Dataset, list[int]]:
    """Split ``count`` rows off ``rows`` for evaluation: (train, held_out, held-out row indices).

    The rows are drawn with ``random.Random(seed)``, so the same data and seed always hold out the
    same documents; both parts keep the data's order.

    Raises:
        ConfigError: naming ``holdout_samples`` when ``count`` would leave no row to train on.
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 0 < count < len(rows):
        raise ConfigError("holdout_samples", count,
                          f"an integer from 1 to {len(rows) - 1} (fewer than the {len(rows)} training samples, "
                          "so that at least one remains to train on)")
    held = sorted(random.Random(seed).sample(range(len(rows)), count))
    chosen = set(held)
    kept = [index for index in range(len(rows)) if index not in chosen]
    return rows.select(kept), rows.select(held), held


def hold_out(data: PreparedData, count: int, seed: int, max_eval_samples: int | None = None) -> PreparedData:
    """``data`` (scored on its training rows) with ``count`` training rows held out for evaluation."""
    train, held, indices = split_holdout(data.train, count, seed)
    shown = min(len(held), max_eval_samples or len(held))
    return PreparedData(train, held.select(range(shown)), False, indices, HOLDOUT, data.no_eval_split)


def load_splits(
    source: Any,
    eval_source: Any = None,
    *,
    column_mapping: Mapping[str, str] | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    holdout_samples: int | None = None,
    seed: int = 42,
    samples: str = "summarise",
    page_size: PageSize = DEFAULT_PAGE_SIZE,
) -> PreparedData:
    """Load and validate a run's training and eval rows (DataError / ConfigError before anything runs).

    ``source`` None: the bundled French samples (their train / eval splits): the documents and their
    summaries, or with ``samples="transcribe"`` their rendered pages and the pages' text. Otherwise the eval rows
    are, in order: ``eval_source``; the source's rows with ``split == "eval"`` (not looked for in a
    ``datasets.Dataset`` given directly); ``holdout_samples`` training rows drawn with ``seed``
    (:func:`split_holdout`); or, with ``holdout_samples`` None, the training rows themselves
    (``eval_on_training_data``). PDF pages are rendered at ``page_size`` (the run's resolution mode:
    :func:`deepsynth.models.image_modes.processor_settings_for_run`).
    """
    if source is None:
        bundled = load_transcription_samples if samples == "transcribe" else load_sample_dataset
        train = bundled("train", max_samples=max_train_samples)
        if eval_source is not None:
            return PreparedData(train, _load(eval_source, column_mapping, None, max_eval_samples, page_size), False)
        return PreparedData(train, bundled("eval", max_samples=max_eval_samples), False, eval_from=EVAL_SPLIT)
    # One read of a file for both splits: validating a row renders its PDF page.
    looks_for_eval = eval_source is None and not isinstance(source, datasets.Dataset)
    limits = {"train": max_train_samples, **({"eval": max_eval_samples} if looks_for_eval else {})}
    splits = DocumentSplits(source, limits, column_mapping=column_mapping, page_size=page_size)
    train = splits.dataset("train")
    if eval_source is not None:
        return PreparedData(train, _load(eval_source, column_mapping, None, max_eval_samples, page_size), False)
    no_eval_split = None
    if looks_for_eval:
        try:
            return PreparedData(train, splits.dataset("eval"), False, eval_from=EVAL_SPLIT)
        except DataError as error:
            no_eval_split = _why_no_eval_split(error)
    shown = min(len(train), max_eval_samples or len(train))
    data = PreparedData(train, train.select(range(shown)), True, eval_from=TRAINING_DATA, no_eval_split=no_eval_split)
    return data if holdout_samples is None else hold_out(data, holdout_samples, seed, max_eval_samples)


def _load(source: Any, mapping: Mapping[str, str] | None, split: str | None, limit: int | None,
          page_size: PageSize) -> datasets.Dataset:
    return load_documents(source, column_mapping=mapping, split=split, max_samples=limit, page_size=page_size)


def _why_no_eval_split(error: DataError) -> str:
    # Said in the user's terms: the loader's own message is addressed to a caller of load_documents
    # ("pass split=None"), not to someone who gave a file.
    if error.column == "split":
        return "it has no 'split' column"
    return error.problem
