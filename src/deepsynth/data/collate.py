"""Turn (document, target) pairs into model inputs with exact label masking, and batch them.

Prompt formats:

* DeepSeek-OCR families: ``<image>\\n`` + instruction, exactly as DeepSeek-OCR is prompted
  (``<image>\\nFree OCR.``). The processor expands ``<image>`` into the number of vision tokens the
  model consumes and prepends BOS.
* Text causal LMs: the tokenizer's chat template when it has one (the user turn holds
  instruction + blank line + text), else the plain prompt ``instruction + "\\n\\n" + text + "\\n\\n"``.

The target is tokenized on its own (no special tokens) and appended after the prompt, then EOS.
Labels are -100 on every prompt and image position, so only the target (and EOS) is learned.
Because prompt and target are tokenized separately, :func:`build_generation_inputs` reproduces the
training prompt token for token.

Length rules (upstream trained silently on all-masked labels — loss 0 — when ``max_length`` was
shorter than the image tokens):

* if ``max_length`` leaves no room for at least one target token plus EOS after the prompt, a
  ``ValueError`` names ``max_length``, the prompt length and the minimum needed;
* a target longer than the room left is cut to fill it, **without** EOS: the text does go on, and
  an EOS after a cut would teach the model to stop mid-sentence. A warning says how much was cut;
* ``max_length`` None (TrainerConfig's default) sizes each example to itself — page vision tokens +
  prompt + target + EOS — so nothing is cut.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

__all__ = [
    "DEFAULT_SUMMARY_INSTRUCTION",
    "IGNORE_INDEX",
    "OCR_INSTRUCTION",
    "DataCollator",
    "RowEncodingError",
    "build_example",
    "build_generation_inputs",
    "build_prompt",
    "encode_rows",
    "is_multimodal_processor",
    "longest_example",
    "task_instruction",
    "row_sources",
]

IGNORE_INDEX = -100
DEFAULT_SUMMARY_INSTRUCTION = "Résume ce document."
# DeepSeek-OCR's own transcription prompt (after "<image>\n").
OCR_INSTRUCTION = "Free OCR."
IMAGE_TOKEN = "<image>"
#: The instruction each task (TrainerConfig.task) uses when none is given.
TASK_INSTRUCTIONS = {"summarise": DEFAULT_SUMMARY_INSTRUCTION, "transcribe": OCR_INSTRUCTION}

_TEXT_KEYS = ("input_ids", "attention_mask", "labels")
# Image-processor settings a processor call would otherwise take from the processor's own defaults.
_TILE_SETTINGS = ("crop_to_patches", "min_patches", "max_patches")
# Image inputs only pages cut into tiles have (tiled resolution modes).
_OPTIONAL_IMAGE_INPUTS = ("pixel_values_local",)


def is_multimodal_processor(processor: Any) -> bool:
    """True for an OCR-family processor (it has an image processor), False for a bare tokenizer."""
    return getattr(processor, "image_processor", None) is not None


def task_instruction(task: str, instruction: str | None = None) -> str:
    """``instruction`` when given, else the task's default (:data:`TASK_INSTRUCTIONS`)."""
    if instruction:
        return instruction
    if task not in TASK_INSTRUCTIONS:
        raise ValueError(f"task: got {task!r}, expected one of {', '.join(TASK_INSTRUCTIONS)}")
    return TASK_INSTRUCTIONS[task]


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def build_prompt(instruction: str, text: str | None = None) -> str:
    """The prompt string: ``<image>\\n<instruction>`` (OCR families) or the plain text-LM prompt."""
    if text is None:
        return f"{IMAGE_TOKEN}\n{instruction}"
    return f"{instruction}\n\n{text}\n\n"


def _open_image(image: Image.Image | str | Path) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    with Image.open(image) as opened:
        return opened.convert("RGB")


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a long document is not a valid path
        return False


def _chat_prompt_ids(tokenizer: Any, instruction: str, text: str) -> list[int] | None:
    if not getattr(tokenizer, "chat_template", None):
        return None
    messages = [{"role": "user", "content": f"{instruction}\n\n{text}"}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded
    if ids and isinstance(ids[0], list):  # some versions return a batch of one
        ids = ids[0]
    return list(ids)


def _encode_prompt(
    processor: Any, source: Image.Image | str | Path, instruction: str, use_chat_template: bool | None
) -> tuple[list[int], dict[str, Any]]:
    """Prompt token ids and the extra model inputs (pixel values…) with their batch dim of 1."""
    if is_multimodal_processor(processor):
        if isinstance(source, str) and not _is_file(source):
            raise TypeError("build_example: the OCR families need a page image (PIL image or image file), got text")
        # DeepseekOcr2Processor's call defaults to crop_to_patches=True, 2-6 tiles, whatever its image
        # processor says; pass the image processor's own settings (the resolution mode) instead.
        image_kwargs = {key: getattr(processor.image_processor, key) for key in _TILE_SETTINGS
                        if getattr(processor.image_processor, key, None) is not None}
        inputs = processor(images=_open_image(source), text=build_prompt(instruction), return_tensors="pt",
                           **image_kwargs)
        ids = inputs["input_ids"][0].tolist()
        extras = {key: value for key, value in inputs.items() if key not in _TEXT_KEYS}
        return ids, extras
    if not isinstance(source, str):
        raise TypeError("build_example: a text causal LM takes the document as a string, got an image")
    tokenizer = processor
    ids = _chat_prompt_ids(tokenizer, instruction, source) if use_chat_template is not False else None
    if ids is None:
        if use_chat_template:
            raise ValueError("build_example: use_chat_template=True but the tokenizer has no chat template")
        ids = tokenizer(build_prompt(instruction, source), add_special_tokens=True)["input_ids"]
    return list(ids), {}


def _eos_id(tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("build_example: the tokenizer has no EOS token; targets could never end")
    return int(eos)


@dataclass
class _Parts:
    """One example before it is fitted to ``max_length``: prompt (image tokens included), target, EOS."""

    prompt_ids: list[int]
    extras: dict[str, Any]
    target_ids: list[int]
    eos_id: int
    image_tokens: int

    @property
    def full_length(self) -> int:
        return len(self.prompt_ids) + len(self.target_ids) + 1

    def words(self) -> str:
        prompt = len(self.prompt_ids) - self.image_tokens
        vision = f"{self.image_tokens} vision + " if self.image_tokens else ""
        return f"{self.full_length} tokens: {vision}{prompt} prompt + {len(self.target_ids)} target + 1 EOS"


def _parts(processor: Any, source: Any, target: str, instruction: str, use_chat_template: bool | None) -> _Parts:
    tokenizer = _tokenizer(processor)
    prompt_ids, extras = _encode_prompt(processor, source, instruction, use_chat_template)
    eos_id = _eos_id(tokenizer)
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if not target_ids:
        raise ValueError("build_example: the target is empty; there would be nothing to learn")
    image_token = getattr(processor, "image_token_id", None)
    image_tokens = sum(1 for token in prompt_ids if token == image_token) if image_token is not None else 0
    return _Parts(list(prompt_ids), extras, list(target_ids), eos_id, image_tokens)


def _assemble(parts: _Parts, max_length: int | None) -> tuple[dict[str, Any], int]:
    """The example (cut to ``max_length`` when set) and how many target tokens it keeps."""
    prompt_length = len(parts.prompt_ids)
    room = parts.full_length - prompt_length if max_length is None else max_length - prompt_length
    if room < 2:
        detail = f" ({parts.image_tokens} image tokens)" if parts.image_tokens else ""
        raise ValueError(
            f"max_length={max_length} leaves no room for the target: the prompt takes {prompt_length} tokens"
            f"{detail}, so max_length must be at least {prompt_length + 2} (prompt + 1 target token + EOS)"
        )
    if len(parts.target_ids) + 1 <= room:
        completion = [*parts.target_ids, parts.eos_id]
    else:
        completion = parts.target_ids[:room]  # a cut target gets no EOS: the text does go on
    input_ids = parts.prompt_ids + completion
    example: dict[str, Any] = {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "attention_mask": torch.ones(len(input_ids), dtype=torch.long),
        "labels": torch.tensor([IGNORE_INDEX] * prompt_length + completion, dtype=torch.long),
    }
    example.update(parts.extras)
    return example, min(len(parts.target_ids), len(completion))


def build_example(
    processor: Any,
    image: Image.Image | str | Path,
    target: str,
    *,
    instruction: str = DEFAULT_SUMMARY_INSTRUCTION,
    max_length: int | None = 2048,
    use_chat_template: bool | None = None,
) -> dict[str, Any]:
    """One training example: ``input_ids``, ``attention_mask``, ``labels`` (1-D) + image inputs.

    Args:
        processor: an OCR-family processor, or a tokenizer for text causal LMs.
        image: the page (PIL image or image file) for OCR families; the document text for text LMs.
        target: what the model should produce (summary or transcription). EOS is appended.
        instruction: :data:`DEFAULT_SUMMARY_INSTRUCTION` for summaries, :data:`OCR_INSTRUCTION` for
            transcription, or any text.
        max_length: longest sequence, prompt and image tokens included; None: as long as the example.
        use_chat_template: text LMs only; None = use the tokenizer's chat template when it has one.

    Image inputs (``pixel_values``, ``num_local_patches``…) keep the processor's batch dimension of
    one, so :class:`DataCollator` concatenates them.

    Raises:
        ValueError: empty target, or ``max_length`` too short for prompt + one target token + EOS.
    """
    parts = _parts(processor, image, target, instruction, use_chat_template)
    example, kept = _assemble(parts, max_length)
    if kept < len(parts.target_ids):
        warnings.warn(
            f"build_example: target of {len(parts.target_ids)} tokens cut to {kept} to fit max_length={max_length} "
            f"(prompt {len(parts.prompt_ids)} tokens); no EOS is added to a cut target",
            stacklevel=2,
        )
    return example


class RowEncodingError(ValueError):
    """A row that cannot become an example; ``sample`` is its 1-based number, ``reason`` what failed."""

    def __init__(self, sample: int, reason: ValueError) -> None:
        self.sample = sample
        self.reason = reason
        super().__init__(f"sample {sample}: {reason}")


def _column(rows: Any, name: str) -> list[Any]:
    # A datasets.Dataset gives a whole column by name; a list of dicts gives rows.
    return list(rows[name]) if hasattr(rows, "column_names") else [row[name] for row in rows]


def row_sources(rows: Any, processor: Any) -> list[Any]:
    """What the model reads of each row: the page ``image`` for OCR families, the ``text`` for text LMs."""
    return _column(rows, "image" if is_multimodal_processor(processor) else "text")


def encode_rows(rows: Any, processor: Any, *, instruction: str, max_length: int | None) -> list[dict[str, Any]]:
    """Each row (``text``/``image``/``summary``) as a :func:`build_example` with its ``summary`` as target.

    ``rows`` is a ``datasets.Dataset`` or a list of dicts. This is the one place rows become
    examples, for training, evaluation and calibration alike. ``max_length`` None sizes every example
    to itself (page vision tokens + prompt + target + EOS): nothing is cut. A set ``max_length`` that
    cuts targets warns once, with the numbers; a row that cannot be encoded raises
    :class:`RowEncodingError` naming it.
    """
    examples, cuts, longest = [], [], None
    for index, (source, target) in enumerate(zip(row_sources(rows, processor), _column(rows, "summary"))):
        try:
            parts = _parts(processor, source, target, instruction, None)
            example, kept = _assemble(parts, max_length)
        except ValueError as error:
            raise RowEncodingError(index + 1, error) from None
        examples.append(example)
        if longest is None or parts.full_length > longest.full_length:
            longest = parts
        if kept < len(parts.target_ids):
            cuts.append(f"sample {index + 1}: target of {len(parts.target_ids)} tokens cut to {kept}")
    if cuts:
        warnings.warn(
            f"max_length={max_length} cuts the targets of {len(cuts)} of {len(examples)} samples "
            f"({'; '.join(cuts[:3])}{'; …' if len(cuts) > 3 else ''}); the longest example needs {longest.words()}; "
            "a cut target is learned without its end (no EOS). Leave max_length unset to size it from the data",
            stacklevel=2,
        )
    return examples


def longest_example(examples: Sequence[dict[str, Any]], processor: Any) -> dict[str, int]:
    """The longest of ``examples`` in tokens, and its parts: ``vision``, ``prompt``, ``target`` (EOS not counted)."""
    if not examples:
        return {"tokens": 0, "vision": 0, "prompt": 0, "target": 0}
    example = max(examples, key=lambda item: len(item["input_ids"]))
    image_token = getattr(processor, "image_token_id", None)
    vision = int((example["input_ids"] == image_token).sum()) if image_token is not None else 0
    labelled = int((example["labels"] != IGNORE_INDEX).sum())
    eos = int(example["labels"][-1] == _tokenizer(processor).eos_token_id)
    total = len(example["input_ids"])
    return {"tokens": total, "vision": vision, "prompt": total - labelled - vision, "target": labelled - eos}


def _cast_floats(values: dict[str, Any], dtype: torch.dtype | None) -> dict[str, Any]:
    # The vision towers do not cast their input: fp32 pixels into a bf16 model fail in the first conv.
    if dtype is None:
        return values
    return {
        key: value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value
        for key, value in values.items()
    }


def build_generation_inputs(
    processor: Any,
    image_or_text: Image.Image | str | Path,
    instruction: str = DEFAULT_SUMMARY_INSTRUCTION,
    *,
    use_chat_template: bool | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Inputs for ``model.generate(**inputs)``: the training prompt exactly, batch of one.

    ``dtype`` (the model's) casts the pixel values; ``.to(device)`` is left to the caller.
    """
    prompt_ids, extras = _encode_prompt(processor, image_or_text, instruction, use_chat_template)
    inputs: dict[str, Any] = {
        "input_ids": torch.tensor([prompt_ids], dtype=torch.long),
        "attention_mask": torch.ones(1, len(prompt_ids), dtype=torch.long),
    }
    inputs.update(_cast_floats(extras, dtype))
    return inputs


class DataCollator:
    """Pad a list of :func:`build_example` outputs into a batch.

    Text fields are right-padded: ``input_ids`` with the pad id, ``attention_mask`` with 0 and
    ``labels`` with -100, so padding never counts in the loss. Image inputs are concatenated along
    their batch dimension (tensors) or joined (lists such as ``patches_grid``). With ``dtype`` (the
    model's dtype), floating-point image inputs are cast to it.
    """

    def __init__(
        self, processor: Any, *, pad_to_multiple_of: int | None = None, dtype: torch.dtype | None = None
    ) -> None:
        tokenizer = _tokenizer(processor)
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id  # padded positions are masked, any valid id works
        if pad_id is None:
            raise ValueError("DataCollator: the tokenizer has neither a pad nor an EOS token")
        self.pad_token_id = int(pad_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.dtype = dtype

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("DataCollator: empty batch")
        length = max(len(feature["input_ids"]) for feature in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        batch: dict[str, Any] = {}
        for key, value in fill.items():
            if key not in features[0]:
                continue
            padded = torch.full((len(features), length), value, dtype=torch.long)
            for row, feature in enumerate(features):
                sequence = torch.as_tensor(feature[key], dtype=torch.long)
                padded[row, : len(sequence)] = sequence
            batch[key] = padded
        keys = dict.fromkeys(key for feature in features for key in feature)
        for key in keys:
            if key in fill:
                continue
            if key in _OPTIONAL_IMAGE_INPUTS:  # a page with no tiles adds none (num_local_patches says 0)
                values = [feature[key] for feature in features if feature.get(key) is not None]
            else:
                values = [feature.get(key) for feature in features]
            if any(value is None for value in values):
                raise ValueError(f"DataCollator: {key!r} is missing from some examples")
            if isinstance(values[0], torch.Tensor):
                batch[key] = torch.cat(values, dim=0)
            else:
                batch[key] = [item for value in values for item in value]
        return _cast_floats(batch, self.dtype)
