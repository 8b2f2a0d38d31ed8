"""Rows → examples in one place (deepsynth.data.collate.encode_rows), as training, evaluation and calibration use it."""

from __future__ import annotations

import warnings

import pytest
import torch

from deepsynth.data import load_sample_dataset
from deepsynth.data.collate import (
    OCR_INSTRUCTION,
    RowEncodingError,
    build_example,
    build_generation_inputs,
    encode_rows,
    longest_example,
    row_sources,
)
from deepsynth.models import tiny


@pytest.fixture(scope="module")
def processor():
    return tiny.build_processor()


def _same(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for key in left:
        if isinstance(left[key], torch.Tensor):
            torch.testing.assert_close(left[key], right[key], rtol=0, atol=0)
        else:
            assert left[key] == right[key], key


def test_dataset_rows_become_the_build_example_of_their_page_and_summary(processor):
    rows = load_sample_dataset("eval", max_samples=2)
    examples = encode_rows(rows, processor, instruction=OCR_INSTRUCTION, max_length=400)
    assert len(examples) == 2
    for example, row in zip(examples, rows):
        # An OCR-family processor reads the rendered page, never the text.
        _same(example, build_example(processor, row["image"], row["summary"], instruction=OCR_INSTRUCTION,
                                     max_length=400))
    assert row_sources(rows, processor) == list(rows["image"])


def test_a_text_model_reads_the_text_of_a_list_of_dicts():
    tokenizer = tiny.shipped_tokenizer()
    rows = [{"text": "Le marché ouvre samedi à huit heures.", "summary": "Marché samedi.", "image": None},
            {"text": "La piscine ferme en août pour travaux.", "summary": "Piscine fermée en août.", "image": None}]
    examples = encode_rows(rows, tokenizer, instruction="Résume.", max_length=128)
    for example, row in zip(examples, rows):
        _same(example, build_example(tokenizer, row["text"], row["summary"], instruction="Résume.", max_length=128))
    assert row_sources(rows, tokenizer) == [row["text"] for row in rows]


def test_a_row_that_cannot_be_encoded_is_named(processor):
    rows = [dict(row) for row in load_sample_dataset("eval", max_samples=2)]
    rows[1]["summary"] = ""
    with pytest.raises(RowEncodingError, match="^sample 2: build_example: the target is empty") as caught:
        encode_rows(rows, processor, instruction=OCR_INSTRUCTION, max_length=400)
    assert caught.value.sample == 2 and isinstance(caught.value, ValueError)
    with pytest.raises(RowEncodingError, match="^sample 1: max_length=8 leaves no room"):
        encode_rows(rows, processor, instruction=OCR_INSTRUCTION, max_length=8)


def test_a_cut_target_still_warns_with_the_numbers(processor):
    rows = load_sample_dataset("eval", max_samples=1)
    prompt_length = build_generation_inputs(processor, rows[0]["image"], OCR_INSTRUCTION)["input_ids"].shape[1]
    target_length = len(processor.tokenizer(rows[0]["summary"], add_special_tokens=False)["input_ids"])
    with pytest.warns(UserWarning) as caught:
        (example,) = encode_rows(rows, processor, instruction=OCR_INSTRUCTION, max_length=prompt_length + 2)
    assert len(example["input_ids"]) == prompt_length + 2
    (message,) = [str(warning.message) for warning in caught]
    # The setting, the sample and its cut, and what the longest example needs: enough to choose max_length.
    assert f"max_length={prompt_length + 2} cuts the targets of 1 of 1 samples" in message
    assert f"sample 1: target of {target_length} tokens cut to 2" in message
    assert f"needs {prompt_length + target_length + 1} tokens: 145 vision + {prompt_length - 145} prompt" in message


def test_unset_max_length_sizes_each_example_to_itself(processor):
    rows = load_sample_dataset("eval", max_samples=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is cut, so nothing warns
        examples = encode_rows(rows, processor, instruction=OCR_INSTRUCTION, max_length=None)
    for example, target in zip(examples, rows["summary"]):
        target_ids = processor.tokenizer(target, add_special_tokens=False)["input_ids"]
        labelled = example["labels"][example["labels"] != -100].tolist()
        assert labelled == [*target_ids, processor.tokenizer.eos_token_id]  # the whole target, then EOS
    longest = longest_example(examples, processor)
    assert longest["tokens"] == max(len(example["input_ids"]) for example in examples)
    assert longest["vision"] == 145
    assert longest["tokens"] == longest["vision"] + longest["prompt"] + longest["target"] + 1
