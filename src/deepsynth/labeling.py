"""Draft targets for unlabelled pages (``deepsynth label``): a model reads each page, the user corrects the lines.

The drafts file is JSON lines that ``deepsynth train --data`` reads as it is: one line per page,
``{"image": "scan.png", "summary": "<draft>"}`` or ``{"image": "report.pdf#page=2", ...}``, the page
named relative to the drafts file, so training re-reads the page itself. Written inside the folder
of pages as ``targets.jsonl``, it is that folder's targets file (``deepsynth train --data FOLDER``).

Runs are resumable: pages the file already names (in ``image``, or ``file`` + ``page``) are skipped,
whatever their summary says now (the user's corrections are kept); each batch's lines are written
and flushed as soon as it is done, so a run that is killed loses at most the batch in progress, and
a line cut by the kill is dropped and drafted again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepsynth.data.collate import build_generation_inputs, is_multimodal_processor
from deepsynth.data.folders import FILE_COLUMN, PAGE_COLUMN, Page, list_pages, read_page
from deepsynth.data.images import TIFF_SUFFIXES, ImageProblem
from deepsynth.data.table import MAX_ROWS, DataError
from deepsynth.data.pdf import page_size_for
from deepsynth.evaluation.compare import MAX_NEW_TOKENS, REPETITION_GUARD, Generation, generations_of

LOGGER = logging.getLogger("deepsynth")
DEFAULT_BATCH_SIZE = 4


@dataclass
class LabelReport:
    """What a ``label`` run did: pages found, skipped (already drafted) and drafted now."""

    out: Path
    pages: int
    skipped: int
    drafted: int = 0
    empty: list[str] = field(default_factory=list)  # pages whose draft is empty
    cut: list[str] = field(default_factory=list)  # drafts stopped by max_new_tokens, not by the model
    guarded: list[str] = field(default_factory=list)  # drafts the repetition guard ended (it banned a repeat)
    #: page → how its draft ended (Generation.report), for the empty, cut and guarded drafts.
    stops: dict[str, str] = field(default_factory=dict)

    def add(self, reference: str, generation: Generation) -> None:
        """Count a draft; keep one the user should look at (empty, cut, ended by the guard) with how it ended."""
        self.drafted += 1
        if generation.empty:
            self.empty.append(reference)
        elif generation.stop_reason == MAX_NEW_TOKENS:
            self.cut.append(reference)
        elif generation.stop_reason == REPETITION_GUARD:
            self.guarded.append(reference)
        else:
            return
        self.stops[reference] = generation.report()

    def warnings(self, shown: int = 10) -> list[str]:
        """One line per kind of draft to look at: the pages, each with how its generation ended."""
        lines = []
        for pages, what in ((self.empty, "empty drafts (write their summary before training)"),
                            (self.guarded, "drafts ended by the repetition guard (the model was repeating itself)"),
                            (self.cut, "drafts stopped at --max-new-tokens")):
            if pages:
                listed = "; ".join(f"{page} [{self.stops[page]}]" for page in pages[:shown])
                lines.append(f"warning: {len(pages)} {what}: {listed}{'; …' if len(pages) > shown else ''}")
        return lines


@dataclass
class _Drafter:
    model: Any
    processor: Any
    instruction: str
    max_new_tokens: int
    no_repeat_ngram_size: int


def draft_labels(
    data: str | os.PathLike[str], out: str | os.PathLike[str], *, adapter: str | os.PathLike[str] | None = None,
    model: str | None = None, instruction: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int | None = None, progress: bool | None = None,
) -> LabelReport:
    """Draft a ``summary`` for every page of ``data`` (a folder, a PDF or an image) not yet in ``out``.

    The model is the adapter's (its base, instruction and generation limits), else ``model`` (default:
    the embedded base) with ``instruction`` (default: the summary instruction; ``"Free OCR."``
    drafts transcriptions). Pages and the drafts file are checked before the model loads.

    Raises:
        DataError: naming the file (and page) that cannot be read, or the drafts file's bad line.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size: got {batch_size!r}, expected a whole number >= 1")
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                       or max_new_tokens < 1):
        raise DataError(f"max_new_tokens: got {max_new_tokens!r}, expected a whole number >= 1")
    source, out = Path(data).expanduser(), _check_out(Path(out).expanduser())
    try:
        pages = list_pages(source, MAX_ROWS)
    except ImageProblem as problem:
        raise DataError(str(problem), source=str(data)) from None
    done = drafted_pages(out)
    todo = [page for page in pages if _key(out.parent, page.path.absolute(), page.page) not in done]
    report = LabelReport(out, pages=len(pages), skipped=len(pages) - len(todo))
    if not todo:
        return report
    drafter = _load_drafter(adapter, model, instruction, max_new_tokens)
    page_size = page_size_for(drafter.processor)
    from tqdm.auto import tqdm  # transformers' own progress bars

    with tqdm(total=len(todo), unit="page", desc="drafting", disable=None if progress is None else not progress) as bar:
        for batch in _chunks(todo, batch_size):
            images = [_read(page, page_size) for page in batch]
            generations = list(generate_batch(drafter, images))
            # Opened once a batch is drafted: a page that cannot be read leaves no empty drafts file.
            with out.open("a", encoding="utf-8") as handle:
                for page, generation in zip(batch, generations):
                    reference = page.reference(out.parent)
                    line = json.dumps({"image": reference, "summary": str(generation)}, ensure_ascii=False)
                    handle.write(line + "\n")
                    report.add(reference, generation)
            bar.update(len(batch))  # closed (flushed): a kill from here on loses nothing of this batch
    return report


def _check_out(out: Path) -> Path:
    if out.suffix.lower() != ".jsonl":
        raise DataError(f"expected a .jsonl file for the drafts (JSON lines, as train reads them), got {out.name!r}",
                        source=str(out))
    if out.is_dir():
        raise DataError("is a folder; expected the drafts file (.jsonl)", source=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _chunks(items: Sequence[Page], size: int) -> Iterator[Sequence[Page]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _read(page: Page, page_size: Any) -> Any:
    try:
        return read_page(page, page_size)
    except ImageProblem as problem:
        raise DataError(str(problem), source=str(page.path)) from None


# ---------------------------------------------------------------------------
# The drafts file already written


def _key(folder: Path, path_text: str | Path, page: int | None) -> tuple[str, int | None]:
    """One page however a line names it: its absolute path, and its page (1 for a PDF named without one)."""
    path = os.path.normpath(os.path.join(folder.absolute(), os.fspath(path_text)))
    if path.lower().endswith(TIFF_SUFFIXES):
        return path, page  # a multi-page TIFF's pages are named; a one-page TIFF's is not
    if not path.lower().endswith(".pdf"):
        return path, None  # an image is one page
    return path, page if page is not None else 1


def drafted_pages(out: Path) -> set[tuple[str, int | None]]:
    """The pages ``out`` already names; a last line cut by a kill is removed from the file."""
    if not out.is_file():
        return set()
    raw = out.read_bytes()
    lines = raw.split(b"\n")
    if lines[-1].strip() and not _parses(lines[-1]):
        # The previous run was stopped while writing this line: drop it, its page is drafted again.
        with out.open("r+b") as handle:
            handle.truncate(len(raw) - len(lines[-1]))
        LOGGER.warning("label: %s: the last line was cut (the previous run was stopped while writing it); "
                       "its page is drafted again", out)
        lines = lines[:-1]
    elif lines[-1].strip():
        with out.open("ab") as handle:  # a complete last line without its newline (an editor's save)
            handle.write(b"\n")
    return {key for number, line in enumerate(lines, 1) if (key := _line_key(out, number, line)) is not None}


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _line_key(out: Path, number: int, line: bytes) -> tuple[str, int | None] | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except ValueError as error:
        raise DataError(f"is not valid JSON ({error}); fix or delete the line (re-running drafts the pages no line "
                        "names)", source=str(out), location=f"line {number}", row=number) from None
    if not isinstance(record, dict):
        return None
    reference = record.get("image") or record.get(FILE_COLUMN)
    if not isinstance(reference, str) or not reference.strip():
        return None  # a row of the user's own (text, or image bytes): nothing to skip
    path, _, fragment = reference.partition("#page=")
    page = record.get(PAGE_COLUMN)
    number_text = fragment or (str(page) if page not in (None, "") else "")
    return _key(out.parent, path, int(number_text) if number_text.isdigit() else None)


# ---------------------------------------------------------------------------
# The model


def _load_drafter(adapter: Any, model: str | None, instruction: str | None, max_new_tokens: int | None) -> _Drafter:
    from deepsynth.evaluation.run_settings import RunSettings

    if adapter is not None:
        from deepsynth.evaluation.adapter_folder import load_adapted_model

        adapted = load_adapted_model(adapter, model_name=model)
        loaded, settings, network = adapted.loaded, adapted.settings, adapted.model
    else:
        from deepsynth.models.loading import load_model_and_processor

        loaded, settings = load_model_and_processor(model), RunSettings()  # the trainer's defaults
        network = loaded.model
    if not is_multimodal_processor(loaded.processor):
        raise DataError(f"model {loaded.name!r} is a text model; label reads page images, so it needs an OCR-family "
                        "model (the default base, or an adapter trained on one)")
    network.eval()
    # An adapter's own prompt (its instruction, else its task's: a transcription adapter reads "Free OCR.").
    from deepsynth.evaluation.adapter_folder import adapter_instruction

    return _Drafter(network, loaded.processor, adapter_instruction(settings, instruction),
                    max_new_tokens or settings.max_new_tokens, settings.no_repeat_ngram_size)


@torch.no_grad()
def generate_batch(drafter: _Drafter, images: Sequence[Any]) -> list[Generation]:
    """Greedy drafts of a batch of pages, each a :class:`~deepsynth.evaluation.compare.Generation` (the text, and
    how it ended: EOS, max_new_tokens, or an end the repetition guard forced).

    The settings of ``deepsynth.evaluation.compare.generate_text`` (greedy, the repetition guard),
    for several pages at once: that function takes one page, and a batch needs its prompts
    left-padded to one length (pages of different sizes make different numbers of image tokens).
    """
    tokenizer = getattr(drafter.processor, "tokenizer", drafter.processor)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(drafter.model.parameters()).device
    parts = [build_generation_inputs(drafter.processor, image, drafter.instruction, dtype=drafter.model.dtype)
             for image in images]
    inputs = left_padded(parts, pad)
    output = drafter.model.generate(
        **{key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()},
        max_new_tokens=drafter.max_new_tokens, do_sample=False,
        no_repeat_ngram_size=drafter.no_repeat_ngram_size or None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=pad, return_dict_in_generate=True, output_logits=True,
    )
    return generations_of(tokenizer, output, inputs["input_ids"].shape[1], drafter.no_repeat_ngram_size)


def left_padded(parts: list[dict[str, Any]], pad: int) -> dict[str, Any]:
    """One batch of generation inputs: prompts left-padded (generation appends on the right), images joined."""
    length = max(part["input_ids"].shape[1] for part in parts)
    ids = torch.full((len(parts), length), pad, dtype=torch.long)
    mask = torch.zeros((len(parts), length), dtype=torch.long)
    for row, part in enumerate(parts):
        size = part["input_ids"].shape[1]
        ids[row, length - size:] = part["input_ids"][0]
        mask[row, length - size:] = part["attention_mask"][0]
    batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    # Keys in any part: with tiles, a page too small for them has no pixel_values_local at all.
    for key in dict.fromkeys(key for part in parts for key in part):
        if key not in batch:
            values = [part[key] for part in parts if key in part]
            joined = [item for value in values for item in value] if not isinstance(values[0], torch.Tensor) else None
            batch[key] = torch.cat(values) if joined is None else joined
    return batch
