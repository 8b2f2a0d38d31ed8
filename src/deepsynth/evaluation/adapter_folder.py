"""A saved adapter folder read back: its run's settings as :class:`RunSettings`; evaluate, generate, export.

:func:`read_adapter_settings` is the one reader of a folder's ``training_config.json``; everything
that needs the run's settings (base model, dtype, task, instruction, resolution mode, max_length,
generation limits, column mapping) takes them from the :class:`RunSettings` it returns, so every default is
the trainer's own.

Folders written by earlier DeepSynth versions still load:

* a key this version does not read (a training-only setting, or one since removed or renamed) is left
  aside (:mod:`deepsynth.evaluation.run_settings`);
* a key the file lacks takes the trainer's default. Folders written before these settings
  existed lack ``router_aux_loss_coef`` (0.0, before the MoE regularisers), ``use_feature_cache``
  (true, before the feature cache) and ``holdout_samples`` (null, before the tiny-data guards): all
  three are training-only, so evaluation and generation are unchanged;
* a folder with no ``training_config.json`` at all (a bare PEFT adapter) takes every default: the
  embedded base model, automatic dtype, the summary task and instruction, ``max_length`` sized from
  the data, the model's default resolution mode, ``max_new_tokens`` 96, ``no_repeat_ngram_size`` 6.
  A warning says so. Folders written before ``task``, ``image_mode`` and a null ``max_length``
  existed summarise, read pages in the model's default mode (what they were trained in) and keep
  their saved ``max_length``.

A folder that is not an adapter folder, or a settings file that cannot be read, is one
:class:`AdapterFolderError` (a ``ValueError``: exit code 2 from the CLI) naming the folder or file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import PeftModel

from deepsynth.data.collate import encode_rows, task_instruction
from deepsynth.errors import ConfigError
from deepsynth.evaluation.compare import Generation, evaluate_model, generate_text, sample_record
from deepsynth.evaluation.metrics import normalisation_words
from deepsynth.evaluation.pages import page_size_for_model
from deepsynth.evaluation.run_settings import RunSettings
from deepsynth.models.adapters import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, attach_adapter
from deepsynth.models.image_modes import mode_for_model, mode_of_resolved
from deepsynth.models.loading import LoadedModel, load_model_and_processor

LOGGER = logging.getLogger("deepsynth")
# Written by the trainer beside the PEFT adapter (TrainerConfig.save: never the Hub token).
TRAINING_CONFIG_FILE = "training_config.json"
# Generations kept (with how each ended) in an evaluation's result, as in the trainer's metrics.json.
SHOWN_SAMPLES = 3


class AdapterFolderError(ValueError):
    """An adapter folder that cannot be read back; the message names the folder or file and what was expected."""


@dataclass
class AdaptedModel:
    """A base model with a DeepSynth adapter applied, and the settings of the run that trained it."""

    model: PeftModel
    loaded: LoadedModel
    settings: RunSettings


def check_adapter_folder(adapter_dir: str | Path) -> Path:
    """``adapter_dir`` as a Path once it holds a PEFT adapter (config + safetensors weights)."""
    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise AdapterFolderError(f"adapter: {folder} is not a folder (expected a DeepSynth/PEFT adapter folder)")
    for name in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise AdapterFolderError(f"adapter: {folder} has no {name} (not a DeepSynth/PEFT adapter folder)")
    _read_json_object(folder / ADAPTER_CONFIG_FILE)  # PEFT's own error would not name the file
    return folder


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise AdapterFolderError(f"adapter: {path} cannot be read ({error})") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise AdapterFolderError(f"adapter: {path} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise AdapterFolderError(f"adapter: {path} holds a JSON {type(data).__name__}, expected an object")
    return data


def read_adapter_settings(adapter_dir: str | Path) -> RunSettings:
    """The settings of the run that wrote ``adapter_dir``, as :class:`RunSettings` (see the module doc).

    Raises:
        AdapterFolderError: not an adapter folder, or a ``training_config.json`` that is unreadable,
            not a JSON object, or holds an invalid value (the field is named).
    """
    folder = check_adapter_folder(adapter_dir)
    path = folder / TRAINING_CONFIG_FILE
    if not path.is_file():
        LOGGER.warning("adapter: %s has no %s; every setting takes the trainer's default "
                       "(base model: the embedded one)", folder, TRAINING_CONFIG_FILE)
        return RunSettings()
    try:
        return RunSettings.from_recorded(_read_json_object(path))
    except ValueError as error:  # ConfigError names the field and what it accepts
        raise AdapterFolderError(f"adapter: {path}: {error}") from None


# load_adapted_model(quantization=AS_TRAINED): the base in the precision the adapter was trained on.
AS_TRAINED = "as-trained"


def load_adapted_model(
    adapter_dir: str | Path, *, model_name: str | None = None, device: str | None = None,
    settings: RunSettings | None = None, quantization: str | None = AS_TRAINED, image_mode: str | None = None,
) -> AdaptedModel:
    """Base model (from the run's settings, or ``model_name``) with the adapter in ``adapter_dir`` applied.

    ``settings``: the folder's settings when the caller has already read them. ``quantization``: by
    default the base is loaded as the run trained on it (``lora_quantization``: 4/8-bit for QLoRA
    presets); ``None`` loads it in full precision, ``"4bit"`` / ``"8bit"`` quantized. Pages are read
    in the resolution mode the adapter was trained in (``image_mode`` of its settings); ``image_mode``
    overrides it, with a warning when it differs from the training mode.
    """
    settings = settings if settings is not None else read_adapter_settings(adapter_dir)
    base = model_name if model_name is not None else settings.model_name
    if quantization == AS_TRAINED:
        quantization = settings.lora_quantization
    if image_mode is not None:
        _warn_if_other_mode(base, image_mode, settings.image_mode, adapter_dir)
    mode = image_mode if image_mode is not None else settings.image_mode
    loaded = load_model_and_processor(base, dtype=settings.dtype, device=device, quantization=quantization,
                                      image_mode=mode)
    return AdaptedModel(attach_adapter(loaded.model, adapter_dir), loaded, settings)


def mode_read(adapted: AdaptedModel, image_mode: str | None) -> str | None:
    """The resolution mode ``adapted`` reads pages in, in words, and whether it is the training mode:
    ``"small (one 384-px view; the adapter's training mode)"``; None for a text model."""
    mode = adapted.loaded.image_mode
    if mode is None:
        return None
    if image_mode is None:
        return f"{mode.name} ({mode.views()}; the adapter's training mode)"
    trained = mode_of_resolved(mode_for_model(adapted.loaded.name, None)[0], adapted.settings.image_mode)
    if trained is None or (trained.name, trained.global_size) == (mode.name, mode.global_size):
        return f"{mode.name} ({mode.views()}, as asked; the adapter's training mode)"
    return f"{mode.name} ({mode.views()}, as asked; the adapter was trained in {trained.name})"


def _warn_if_other_mode(base: str | None, override: str, trained: str | None, adapter_dir: str | Path) -> None:
    """Warn when ``override`` is not the mode the adapter was trained in (both resolved for the base model)."""
    resolved, wanted = mode_for_model(base, override)  # raises ConfigError for a mode the family lacks
    used = mode_of_resolved(resolved, trained)
    if wanted is None or used is None or (wanted.name, wanted.global_size) == (used.name, used.global_size):
        return
    LOGGER.warning("image_mode: reading pages in mode %r (%s), but the adapter in %s was trained in mode %r (%s); "
                   "a resolution other than training's usually costs quality (leave --image-mode out to reuse the "
                   "training mode)", wanted.name, wanted.views(), adapter_dir, used.name, used.views())


def adapter_instruction(settings: RunSettings, instruction: str | None = None) -> str:
    """The prompt for an adapter trained with ``settings``: ``instruction`` when given, else the run's own
    (its ``instruction``, or its task's when that is null, as in training). label, eval and generate call it."""
    return instruction or task_instruction(settings.task, settings.instruction)


def _open_page(image: str | Path, settings: RunSettings, image_mode: str | None) -> Any:
    """The page image ``image`` names: an image file, a PDF page (``report.pdf#page=2``) rendered for the mode,
    or a page of a multi-page TIFF (``fax.tif#page=2``)."""
    import io

    from PIL import Image, UnidentifiedImageError

    from deepsynth.data.images import ImageProblem, UnnamedPage, normalize_image, read_file, tiff_reference
    from deepsynth.data.pdf import parse_reference, render_page

    try:
        reference, tiff = parse_reference(str(image)), tiff_reference(str(image))
        if reference is not None:  # rendered at the size the mode the adapter reads in needs
            path, number = reference
            size = page_size_for_model(settings.model_name, image_mode or settings.image_mode)
            image = io.BytesIO(render_page(Path(path).read_bytes(), number, described=path, target_size=size,
                                           path=path))
        elif tiff is not None:  # a TIFF may hold several pages: named like a PDF's
            path, number = tiff
            data, described = read_file(path, Path.cwd(), None)
            try:
                image = io.BytesIO(normalize_image(data, described, number))
            except UnnamedPage as problem:
                problem.path = path
                raise
    except UnnamedPage as problem:  # in the words of --image, not of a data file's row and 'page' column
        raise ValueError(f"generate: image {problem.path} has {problem.count} pages and names none; give one page: "
                         f"{problem.path}#page=N (N from 1 to {problem.count})") from None
    except ImageProblem as problem:
        raise ValueError(f"generate: image: {problem}") from None
    except OSError as error:
        raise ValueError(f"generate: image {image}: not a readable PDF file ({error})") from None
    except Exception as error:  # Pillow raises several types for a damaged TIFF
        raise ValueError(f"generate: image {image}: not a readable image file ({error})") from None
    try:
        with Image.open(image) as page:
            return page.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"generate: image {image}: not a readable image file ({error})") from None


@dataclass
class EvalRows:
    """The rows an evaluation scores, and which they are in the user's words (``scored``)."""

    rows: Any
    scored: str
    eval_on_training_data: bool = False


def adapter_eval_rows(adapter_dir: str | Path, settings: RunSettings, data: str | Path | None,
                      max_samples: int | None, image_mode: str | None) -> EvalRows:
    """The rows to score the adapter on: ``data``'s ``eval`` rows (all its rows when it has no ``split``
    column), or without ``data`` the rows the adapter's own run held out (its eval data, its data's
    ``eval`` split, its ``holdout_samples``, or the bundled eval split for a run on the bundled samples).

    Raises:
        ValueError: (DataError, AdapterFolderError) ``data`` marks no row ``eval``; without ``data``, the
            run held out no rows or left no record of its data: the message says what to pass.
    """
    # PDF pages at the size the mode the model will read them in needs (the training mode unless overridden).
    page_size = page_size_for_model(settings.model_name, image_mode or settings.image_mode)
    if data is not None and not _is_runs_data(data, settings):
        return _eval_rows_of(data, settings, max_samples, page_size)
    if not (Path(adapter_dir) / TRAINING_CONFIG_FILE).is_file():
        raise AdapterFolderError(f"adapter: {adapter_dir} has no {TRAINING_CONFIG_FILE}, so the rows its run held "
                                 "out are unknown; pass --data FILE with rows it was not trained on")
    return _held_out_rows(adapter_dir, settings, max_samples, page_size)


def _is_runs_data(data: str | Path, settings: RunSettings) -> bool:
    """True when ``data`` is the file the adapter was trained on (its run's split decides the rows)."""
    if settings.data_path is None or settings.eval_data_path is not None:
        return False
    try:
        return Path(data).expanduser().resolve() == Path(settings.data_path).expanduser().resolve()
    except (OSError, RuntimeError):
        return False


def _eval_rows_of(data: str | Path, settings: RunSettings, max_samples: int | None, page_size: Any) -> EvalRows:
    from deepsynth.data import load_documents
    from deepsynth.data.table import DataError

    options = dict(column_mapping=settings.column_mapping, max_samples=max_samples, page_size=page_size)
    try:
        rows = load_documents(data, split="eval", **options)
        return EvalRows(rows, f"the {_rows(len(rows))} of {data} marked split 'eval'")
    except DataError as error:
        if error.column != "split":
            raise
        if "no 'split' column" not in error.problem:  # a split column, but no row marked 'eval'
            raise DataError(f"no rows marked 'eval' ({error.problem.partition('(')[2].rstrip(')') or 'none'}); eval "
                            "scores the rows marked 'eval' (rows marked 'train' are training rows): mark the rows to "
                            "score split=eval, or give a file of them", source=str(data), column="split") from None
    rows = load_documents(data, **options)
    return EvalRows(rows, f"all {_rows(len(rows))} of {data}" if len(rows) > 1 else f"the one row of {data}")


def _held_out_rows(adapter_dir: str | Path, settings: RunSettings, max_samples: int | None,
                   page_size: Any) -> EvalRows:
    """The eval rows of the run that trained the adapter, drawn as the trainer drew them (load_splits)."""
    from deepsynth.data.table import DataError
    from deepsynth.data.splits import EVAL_DATA, HOLDOUT, load_splits

    limit = max_samples if max_samples is not None else settings.max_eval_samples
    try:
        split = load_splits(settings.data_path, settings.eval_data_path, column_mapping=settings.column_mapping,
                            max_train_samples=settings.max_train_samples, max_eval_samples=limit,
                            holdout_samples=settings.holdout_samples, seed=settings.seed, samples=settings.task,
                            page_size=page_size)
    except DataError as error:
        raise AdapterFolderError(f"adapter: the data its run recorded in {TRAINING_CONFIG_FILE} cannot be read "
                                 f"({error}); pass --data FILE with rows it was not trained on") from None
    source = settings.data_path or "the bundled samples"
    if split.eval_on_training_data:
        raise AdapterFolderError(f"adapter: the run that trained {adapter_dir} held out no rows of {source} (its "
                                 "scores were on its training rows); pass --data FILE with rows it was not trained on")
    count = len(split.eval)
    if split.eval_from == EVAL_DATA:
        return EvalRows(split.eval, f"the {_rows(count)} of its eval data {settings.eval_data_path}")
    if split.eval_from == HOLDOUT:
        _check_recorded_holdout(adapter_dir, split.held_out_indices)
        rows = ", ".join(str(index + 1) for index in split.held_out_indices[:count])
        numbers = f"row{'s' if count > 1 else ''} {rows}"
        return EvalRows(split.eval, f"the {_rows(count)} of {source} held out from training ({numbers}, drawn with "
                                    f"seed {settings.seed})")
    return EvalRows(split.eval, f"the {_rows(count)} of {source} marked split 'eval' (held out from training)")


def _rows(count: int) -> str:
    return "1 row" if count == 1 else f"{count} rows"


def _check_recorded_holdout(adapter_dir: str | Path, indices: list[int]) -> None:
    """Refuse when the run's metrics.json names other held-out rows: the data changed since training."""
    path = Path(adapter_dir) / "metrics.json"
    if not path.is_file():
        return
    recorded = (_read_json_object(path).get("holdout") or {}).get("indices")
    if recorded is not None and list(recorded) != list(indices):
        raise AdapterFolderError(f"adapter: {path} records held-out rows {recorded}, but its data now gives "
                                 f"{indices}: the data changed since training; pass --data FILE with the rows to "
                                 "score")


def evaluate_adapter(
    adapter_dir: str | Path, data: str | Path | None = None, *, max_samples: int | None = None,
    image_mode: str | None = None, ignore_case: bool | None = None, ignore_punctuation: bool | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Before/after metrics of the adapter in ``adapter_dir`` on the rows :func:`adapter_eval_rows` picks
    (``data``'s eval rows; without ``data``, the rows the adapter's run held out); ``scored_rows`` says which.

    The adapter's task decides the metrics and the default data; ``image_mode`` overrides the training
    mode (with a warning); ``ignore_case`` / ``ignore_punctuation`` (None: the run's settings) relax
    transcription scores. ``samples`` holds the first few generations and how each ended; ``image_mode_read``
    the mode the pages were read in, in words (:func:`mode_read`). ``progress``: a progress bar of samples
    scored on stderr (None: shown; False: not).
    """
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                    or max_samples <= 0):
        raise ConfigError("max_eval_samples", max_samples, "null (every eval row) or an integer > 0")
    settings = read_adapter_settings(adapter_dir)
    # The data is checked before the model loads: a bad file fails in a second, not after a minute.
    chosen = adapter_eval_rows(adapter_dir, settings, data, max_samples, image_mode)
    rows = chosen.rows
    adapted = load_adapted_model(adapter_dir, settings=settings, image_mode=image_mode)
    processor, instruction = adapted.loaded.processor, adapter_instruction(settings)
    examples = encode_rows(rows, processor, instruction=instruction, max_length=settings.max_length)
    options = {"ignore_case": settings.metric_ignore_case if ignore_case is None else ignore_case,
               "ignore_punctuation": settings.metric_ignore_punctuation if ignore_punctuation is None
               else ignore_punctuation}
    kwargs = dict(references=list(rows["summary"]), max_new_tokens=settings.max_new_tokens,
                  no_repeat_ngram_size=settings.no_repeat_ngram_size, task=settings.task, progress=progress, **options)
    before, predictions_before = evaluate_model(adapted.model, processor, examples, adapter_disabled=True, **kwargs)
    after, predictions_after = evaluate_model(adapted.model, processor, examples, **kwargs)
    mode = adapted.loaded.image_mode
    result = {"num_eval_samples": len(rows), "eval_on_training_data": chosen.eval_on_training_data,
              "scored_rows": chosen.scored, "task": settings.task,
              "image_mode_read": mode_read(adapted, image_mode),
              "image_mode": None if mode is None else mode.name, "eval": {"before": before, "after": after},
              "samples": [sample_record(*texts) for texts in
                          list(zip(rows["summary"], predictions_before, predictions_after))[:SHOWN_SAMPLES]]}
    if settings.task == "transcribe":
        result["text_normalisation"] = normalisation_words(**options)
    return result


def generate_from_adapter(
    adapter_dir: str | Path, *, image: str | Path | None = None, text: str | None = None,
    max_new_tokens: int | None = None, image_mode: str | None = None,
) -> Generation:
    """Generate with the adapter in ``adapter_dir`` from a page image or a text.

    OCR-family models read pages: a text is rendered to a page first, as in training, and read in the
    training mode unless ``image_mode`` overrides it (with a warning when it differs). The result is
    a :class:`~deepsynth.evaluation.compare.Generation`: the text, how generation ended, and the mode
    the page was read in (``image_mode``, :func:`mode_read`).
    """
    _check_generation_request(image, text, max_new_tokens)
    settings = read_adapter_settings(adapter_dir)
    page = _open_page(image, settings, image_mode) if image is not None else None  # fails before the model loads
    adapted = load_adapted_model(adapter_dir, settings=settings, image_mode=image_mode)
    generation = _generate(adapted.model, adapted.loaded, adapted.settings, page, text, max_new_tokens)
    generation.image_mode = mode_read(adapted, image_mode)
    return generation


def generate_from_model(
    model_dir: str | Path, *, image: str | Path | None = None, text: str | None = None,
    max_new_tokens: int | None = None, image_mode: str | None = None,
) -> Generation:
    """Generate with a model folder — a merged export (``deepsynth export --merge``) or any base model.

    A merged export keeps its run's ``training_config.json``: the task, instruction, mode and generation
    settings come from it, as from an adapter folder; any other model reads its own mode and the
    summary task.
    """
    _check_generation_request(image, text, max_new_tokens)
    recorded = Path(model_dir) / TRAINING_CONFIG_FILE
    data = _read_json_object(recorded) if recorded.is_file() else {}
    try:
        settings = RunSettings.from_recorded(data, model_name=str(model_dir))
    except ValueError as error:
        raise AdapterFolderError(f"model: {recorded}: {error}") from None
    page = _open_page(image, settings, image_mode) if image is not None else None  # fails before the model loads
    loaded = load_model_and_processor(str(model_dir), dtype=settings.dtype,
                                      image_mode=image_mode if image_mode is not None else settings.image_mode)
    generation = _generate(loaded.model, loaded, settings, page, text, max_new_tokens)
    mode = loaded.image_mode
    generation.image_mode = f"{mode.name} ({mode.views()})" if mode is not None else None
    return generation


def _check_generation_request(image: Any, text: str | None, max_new_tokens: Any) -> None:
    """Exactly one of image or text, and a token limit > 0 if one is given: checked before anything loads."""
    if (image is None) == (text is None):
        raise ValueError("generate: give exactly one of image or text")
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                       or max_new_tokens <= 0):
        raise ConfigError("max_new_tokens", max_new_tokens, "null (the adapter's setting) or an integer > 0")


def _generate(model: Any, loaded: Any, settings: RunSettings, page: Any, text: str | None,
              max_new_tokens: int | None) -> Generation:
    from deepsynth.data import render_document

    if loaded.is_multimodal:
        source = page if page is not None else render_document(text)
    elif text is None:
        raise ValueError(f"generate: {loaded.name} is a text model; give text, not an image")
    else:
        source = text
    return generate_text(
        model, loaded.processor, source, instruction=adapter_instruction(settings),
        max_new_tokens=max_new_tokens or settings.max_new_tokens, no_repeat_ngram_size=settings.no_repeat_ngram_size,
    )
