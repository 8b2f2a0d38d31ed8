"""Score a model on held-out samples: teacher-forced loss plus generated-text metrics.

The same function scores the base model (adapter disabled) and the adapted one on the same
samples, which is what the before/after table in ``metrics.json`` compares. A saved adapter
folder is scored through ``deepsynth.evaluation.adapter_folder.evaluate_adapter``.

Every generation says how it ended (:class:`Generation`): at the model's EOS, at ``max_new_tokens``,
or at an EOS the repetition guard forced (``no_repeat_ngram_size`` banned the model's first choice),
and whether it came out empty — an empty line alone tells a user nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from transformers import NoRepeatNGramLogitsProcessor

from deepsynth.data.collate import DataCollator, build_generation_inputs
from deepsynth.evaluation.metrics import task_metrics
from deepsynth.models.feature_cache import FEATURES_KEY, IMAGE_INPUT_KEYS, CachedFeatureCollator, CachedImageFeatures
from deepsynth.models.logits import IGNORE_INDEX, labelled_logits_support, with_labelled_logits

#: Why a generation stopped.
EOS, MAX_NEW_TOKENS, REPETITION_GUARD = "eos", "max_new_tokens", "repetition_guard"


class Generation(str):
    """Generated text — a ``str``, so callers that print or compare it keep working — that says how it ended.

    ``stop_reason``: ``eos`` (the model ended the text), ``max_new_tokens`` (cut at the limit) or
    ``repetition_guard`` (the guard banned the model's choice and it then ended the text).
    ``new_tokens``: tokens generated, EOS included. ``blocked_repeats``: steps at which the
    repetition guard replaced the model's first choice.
    """

    stop_reason: str
    new_tokens: int
    blocked_repeats: int
    no_repeat_ngram_size: int
    #: The resolution mode the page was read in, in words (set by generate; None for a text or unset).
    image_mode: str | None = None

    def __new__(cls, text: str, *, stop_reason: str, new_tokens: int, blocked_repeats: int = 0,
                no_repeat_ngram_size: int = 0) -> Generation:
        generation = super().__new__(cls, text)
        generation.stop_reason = stop_reason
        generation.new_tokens = new_tokens
        generation.blocked_repeats = blocked_repeats
        generation.no_repeat_ngram_size = no_repeat_ngram_size
        return generation

    @property
    def empty(self) -> bool:
        return not self.strip()

    def report(self) -> str:
        """How the generation ended, in one line (printed by ``generate`` and ``eval``)."""
        guard = f"the repetition guard (no_repeat_ngram_size={self.no_repeat_ngram_size})"
        if self.stop_reason == MAX_NEW_TOKENS:
            why = f"stopped at max_new_tokens ({self.new_tokens} tokens): the text may go on; raise --max-new-tokens"
        elif self.stop_reason == REPETITION_GUARD:
            why = (f"stopped by {guard}: it banned a repeat and the model then ended the text "
                   f"(EOS after {self.new_tokens - 1} tokens)")
        elif self.new_tokens <= 1:
            why = "the model ended the text at once (EOS as its first token)"
        else:
            why = f"ended by the model (EOS after {self.new_tokens - 1} tokens)"
        if self.blocked_repeats and self.stop_reason != REPETITION_GUARD:
            why += f"; {guard} blocked {self.blocked_repeats} repeat(s) on the way"
        return f"empty generation: {why}" if self.empty else why

    def to_dict(self) -> dict[str, Any]:
        return {"text": str(self), "stop_reason": self.stop_reason, "new_tokens": self.new_tokens,
                "blocked_repeats": self.blocked_repeats, "empty": self.empty, "report": self.report(),
                "image_mode": self.image_mode}


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _blocked_steps(sequences: torch.Tensor, prompt_length: int, logits: Sequence[torch.Tensor],
                   no_repeat_ngram_size: int, row: int = 0, length: int | None = None) -> list[int]:
    """Steps (of the first ``length``) at which the repetition guard replaced row ``row``'s greedy choice.

    Greedy decoding picks the top raw logit unless a logits processor banned it; here the ban is
    checked by running transformers' own NoRepeatNGramLogitsProcessor on the same prefix.
    """
    if not no_repeat_ngram_size:
        return []
    guard = NoRepeatNGramLogitsProcessor(no_repeat_ngram_size)
    blocked = []
    for step, step_logits in enumerate(logits[:length]):
        chosen = int(sequences[row, prompt_length + step])
        first_choice = int(step_logits[row].argmax())
        if first_choice == chosen:
            continue
        prefix = sequences[row : row + 1, : prompt_length + step]
        banned = guard(prefix, step_logits[row : row + 1].clone().float())[0, first_choice]
        if torch.isinf(banned) and banned < 0:
            blocked.append(step)
    return blocked


def generations_of(tokenizer: Any, output: Any, prompt_length: int, no_repeat_ngram_size: int) -> list[Generation]:
    """One :class:`Generation` per row of ``model.generate``'s output (``return_dict_in_generate`` and
    ``output_logits`` set): its text up to its first EOS, and why it stopped there.

    A row of a batch that ended early is padded after its EOS; what follows the EOS is not its text.
    """
    eos = tokenizer.eos_token_id
    generations = []
    for row in range(output.sequences.shape[0]):
        tokens = output.sequences[row, prompt_length:].tolist()
        ended = eos in tokens
        if ended:
            tokens = tokens[: tokens.index(eos) + 1]
        blocked = _blocked_steps(output.sequences, prompt_length, output.logits, no_repeat_ngram_size, row,
                                 len(tokens))
        if not ended:
            reason = MAX_NEW_TOKENS
        elif blocked and blocked[-1] == len(tokens) - 1:
            reason = REPETITION_GUARD  # the EOS itself came from the guard's ban of the model's choice
        else:
            reason = EOS
        text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        generations.append(Generation(text, stop_reason=reason, new_tokens=len(tokens), blocked_repeats=len(blocked),
                                      no_repeat_ngram_size=no_repeat_ngram_size))
    return generations


@torch.no_grad()
def generate_text(
    model: torch.nn.Module,
    processor: Any,
    source: Any,
    *,
    instruction: str,
    max_new_tokens: int,
    no_repeat_ngram_size: int,
) -> Generation:
    """Greedy generation for one page (OCR families) or text (causal LMs), with the repetition guard.

    Returns a :class:`Generation`: the text (a ``str``) and how generation ended.
    """
    inputs = build_generation_inputs(processor, source, instruction, dtype=model.dtype)
    return generate_from_inputs(model, processor, inputs, max_new_tokens=max_new_tokens,
                                no_repeat_ngram_size=no_repeat_ngram_size)


def example_generation_inputs(example: dict[str, Any], dtype: torch.dtype | None = None) -> dict[str, Any]:
    """``model.generate`` inputs for an encoded example: its prompt (every token before the first labelled
    one — the training prompt exactly, as :func:`build_generation_inputs` builds it) and its page, as the
    cached features when it has them (the vision encoder is not run again), else as its pixels."""
    labels = torch.as_tensor(example["labels"])
    labelled = (labels != IGNORE_INDEX).nonzero()
    end = int(labelled[0]) if len(labelled) else len(labels)
    input_ids = torch.as_tensor(example["input_ids"][:end], dtype=torch.long)[None]
    inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if FEATURES_KEY in example:
        inputs["mm_encoder_outputs"] = {"image": CachedImageFeatures(pooler_output=[example[FEATURES_KEY]])}
    for key in IMAGE_INPUT_KEYS:
        value = example.get(key)
        if isinstance(value, torch.Tensor) and value.is_floating_point() and dtype is not None:
            value = value.to(dtype)
        if value is not None:
            inputs[key] = value
    return inputs


def generate_from_inputs(model: torch.nn.Module, processor: Any, inputs: dict[str, Any], *, max_new_tokens: int,
                         no_repeat_ngram_size: int) -> Generation:
    """Greedy generation from prepared inputs (:func:`build_generation_inputs`, :func:`example_generation_inputs`)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    device = next(model.parameters()).device
    inputs = _to_device(inputs, device)
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        no_repeat_ngram_size=no_repeat_ngram_size or None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        return_dict_in_generate=True,
        output_logits=True,
    )
    return generations_of(tokenizer, output, inputs["input_ids"].shape[1], no_repeat_ngram_size)[0]


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    processor: Any,
    examples: Sequence[dict[str, Any]],
    references: Sequence[str],
    *,
    max_new_tokens: int,
    no_repeat_ngram_size: int,
    adapter_disabled: bool = False,
    task: str = "summarise",
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    progress: bool | None = None,
) -> tuple[dict[str, float], list[Generation]]:
    """Mean loss over ``examples`` and ``task``'s text metrics of their greedy generations vs ``references``.

    The loss is computed on labelled positions only when the model supports it (as training does: no
    full-vocabulary logits of image and prompt positions); generations start from each example's
    prompt (its instruction included) and page — cached features when the example has them. With ``adapter_disabled`` a PEFT model is scored as its base model. ``ignore_case`` /
    ``ignore_punctuation``: transcription scores only (deepsynth.evaluation.metrics). ``progress``: a
    progress bar of samples done / total on stderr (None: shown, as the Trainer shows its bars; False: not). Returns
    (metrics, predictions), each prediction a :class:`Generation`.
    """
    from tqdm.auto import tqdm  # transformers' own progress bars

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = CachedFeatureCollator(DataCollator(processor, dtype=model.dtype))
    labelled_only, _ = labelled_logits_support(model)
    context = model.disable_adapter() if adapter_disabled else nullcontext()
    losses: list[float] = []
    predictions: list[Generation] = []
    # Scoring a real base takes minutes (SmolLM2: 11 on a CPU): samples done / total, on stderr.
    bar = tqdm(total=len(examples), unit="sample", desc="scoring the base model" if adapter_disabled else "scoring",
               disable=progress is False)  # shown by default, like the Trainer's own bars (logs too)
    try:
        with context, bar:
            for example in examples:
                batch = collate([example])
                batch = with_labelled_logits(batch) if labelled_only else batch
                losses.append(float(model(**_to_device(batch, device)).loss))
                predictions.append(generate_from_inputs(
                    model, processor, example_generation_inputs(example, model.dtype),
                    max_new_tokens=max_new_tokens, no_repeat_ngram_size=no_repeat_ngram_size))
                bar.update(1)
    finally:
        model.train(was_training)
    scores = task_metrics(task, predictions, references, ignore_case=ignore_case, ignore_punctuation=ignore_punctuation)
    return {"loss": sum(losses) / len(losses), **scores}, predictions


def sample_record(reference: str, before: str, after: str) -> dict[str, Any]:
    """One shown sample of ``metrics.json``: the texts, and how each generation ended when it says so."""
    record: dict[str, Any] = {"reference": reference, "before": str(before), "after": str(after)}
    for key, generation in (("before", before), ("after", after)):
        if isinstance(generation, Generation):
            record[f"{key}_stop"] = generation.report()
    return record
