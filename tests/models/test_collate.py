"""Prompt building, label masking, truncation and batching (deepsynth.data.collate)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from deepsynth.data.collate import (
    DEFAULT_SUMMARY_INSTRUCTION,
    IGNORE_INDEX,
    OCR_INSTRUCTION,
    DataCollator,
    build_example,
    build_generation_inputs,
)
from deepsynth.models import tiny

TARGET = "Le budget est voté ; l'école sera rénovée."


@pytest.fixture(scope="module")
def processor():
    return tiny.build_processor()


def _target_ids(processor, text=TARGET):
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_labels_are_exactly_target_plus_eos(processor, page_image):
    example = build_example(processor, page_image, TARGET, instruction=DEFAULT_SUMMARY_INSTRUCTION, max_length=512)
    prompt = build_generation_inputs(processor, page_image, DEFAULT_SUMMARY_INSTRUCTION)["input_ids"][0].tolist()
    completion = [*_target_ids(processor), processor.tokenizer.eos_token_id]
    input_ids, labels = example["input_ids"].tolist(), example["labels"].tolist()

    assert input_ids == prompt + completion  # the generation prompt is the training prompt
    assert labels == [IGNORE_INDEX] * len(prompt) + completion
    assert input_ids[0] == processor.tokenizer.bos_token_id
    assert input_ids.count(tiny.IMAGE_TOKEN_ID) == tiny.NUM_VISION_TOKENS
    assert all(label == IGNORE_INDEX for token, label in zip(input_ids, labels) if token == tiny.IMAGE_TOKEN_ID)
    assert example["attention_mask"].tolist() == [1] * len(input_ids)
    assert labels[-1] == processor.tokenizer.eos_token_id


def test_prompt_is_deepseek_ocr_format(processor, page_image):
    ids = build_generation_inputs(processor, page_image, OCR_INSTRUCTION)["input_ids"][0].tolist()
    text_part = [token for token in ids[1:] if token != tiny.IMAGE_TOKEN_ID]
    assert processor.tokenizer.decode(text_part) == "\nFree OCR."


def test_padded_batch_masks_padding_and_matches_single_runs(embedded, page_image):
    model, processor = embedded
    short = build_example(processor, page_image, "Budget voté.", max_length=512)
    long = build_example(processor, page_image, TARGET + " " + TARGET, max_length=512)
    batch = DataCollator(processor)([short, long])

    length = len(long["input_ids"])
    pad = length - len(short["input_ids"])
    assert pad > 0 and batch["input_ids"].shape == (2, length)
    assert batch["input_ids"][0, -pad:].tolist() == [processor.tokenizer.pad_token_id] * pad
    assert batch["attention_mask"][0, -pad:].tolist() == [0] * pad
    assert batch["labels"][0, -pad:].tolist() == [IGNORE_INDEX] * pad
    assert batch["pixel_values"].shape == (2, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)
    assert batch["num_local_patches"].tolist() == [0, 0]

    with torch.no_grad():
        together = model(**batch)
        alone = model(**DataCollator(processor)([short]))
    assert torch.isfinite(together.loss)
    # Right padding under a causal mask changes nothing for the real tokens.
    assert torch.allclose(together.logits[0, : len(short["input_ids"])], alone.logits[0], atol=1e-4)


def test_max_length_without_room_for_the_target_is_an_error(processor, page_image):
    prompt_length = len(build_generation_inputs(processor, page_image, OCR_INSTRUCTION)["input_ids"][0])
    with pytest.raises(ValueError) as error:
        build_example(processor, page_image, TARGET, instruction=OCR_INSTRUCTION, max_length=128)
    message = str(error.value)
    assert "max_length=128" in message
    assert f"prompt takes {prompt_length} tokens" in message and "145 image tokens" in message
    assert f"at least {prompt_length + 2}" in message
    with pytest.raises(ValueError, match="max_length"):
        build_example(processor, page_image, TARGET, instruction=OCR_INSTRUCTION, max_length=prompt_length + 1)


def test_long_target_is_cut_without_eos_and_never_all_masked(processor, page_image):
    prompt_length = len(build_generation_inputs(processor, page_image, OCR_INSTRUCTION)["input_ids"][0])
    with pytest.warns(UserWarning, match="no EOS"):
        example = build_example(processor, page_image, TARGET, instruction=OCR_INSTRUCTION, max_length=prompt_length + 2)
    learned = [label for label in example["labels"].tolist() if label != IGNORE_INDEX]
    assert learned == _target_ids(processor)[:2]
    assert len(example["input_ids"]) == prompt_length + 2

    one_token = processor.tokenizer.decode(_target_ids(processor)[:1])
    example = build_example(processor, page_image, one_token, instruction=OCR_INSTRUCTION, max_length=prompt_length + 2)
    learned = [label for label in example["labels"].tolist() if label != IGNORE_INDEX]
    assert learned == [*_target_ids(processor, one_token), processor.tokenizer.eos_token_id]


def test_empty_target_and_wrong_inputs_are_refused(processor, page_image):
    with pytest.raises(ValueError, match="empty"):
        build_example(processor, page_image, "", max_length=512)
    with pytest.raises(TypeError, match="page image"):
        build_example(processor, "du texte, pas une image", TARGET, max_length=512)
    with pytest.raises(TypeError, match="string"):
        build_example(processor.tokenizer, page_image, TARGET, max_length=512)


def test_image_file_path_is_accepted(processor, page_image, tmp_path):
    path = tmp_path / "page.png"
    page_image.save(path)
    from_file = build_example(processor, str(path), TARGET, max_length=512)
    from_image = build_example(processor, page_image, TARGET, max_length=512)
    assert torch.equal(from_file["input_ids"], from_image["input_ids"])
    assert torch.equal(from_file["pixel_values"], from_image["pixel_values"])


# ------------------------------------------------------------------------------------------------
# Text causal LMs
# ------------------------------------------------------------------------------------------------

DOCUMENT = "Le conseil municipal a voté le budget. Les dépenses augmentent de 3 %."


@pytest.fixture()
def text_lm():
    tokenizer = tiny.shipped_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


def test_text_plain_prompt_masking_and_loss(text_lm):
    model, tokenizer = text_lm
    example = build_example(tokenizer, DOCUMENT, TARGET, max_length=256)
    prompt = tokenizer(f"{DEFAULT_SUMMARY_INSTRUCTION}\n\n{DOCUMENT}\n\n")["input_ids"]
    completion = [*tokenizer(TARGET, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    assert example["input_ids"].tolist() == prompt + completion
    assert example["labels"].tolist() == [IGNORE_INDEX] * len(prompt) + completion
    assert build_generation_inputs(tokenizer, DOCUMENT)["input_ids"][0].tolist() == prompt

    other = build_example(tokenizer, DOCUMENT + " Fin.", "Court.", max_length=256)
    batch = DataCollator(tokenizer)([example, other])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)

    with pytest.raises(ValueError, match="max_length=10"):
        build_example(tokenizer, DOCUMENT, TARGET, max_length=10)


def test_text_chat_template_is_used_when_present(text_lm):
    _, tokenizer = text_lm
    tokenizer.chat_template = (
        "{% for m in messages %}<|User|>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<|Assistant|>{% endif %}"
    )
    example = build_example(tokenizer, DOCUMENT, TARGET, max_length=256)
    prompt = tokenizer(f"<|User|>{DEFAULT_SUMMARY_INSTRUCTION}\n\n{DOCUMENT}<|Assistant|>", add_special_tokens=False)["input_ids"]
    completion = [*tokenizer(TARGET, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    assert example["input_ids"].tolist() == prompt + completion
    assert example["labels"].tolist() == [IGNORE_INDEX] * len(prompt) + completion
    assert build_generation_inputs(tokenizer, DOCUMENT)["input_ids"][0].tolist() == prompt
    plain = build_example(tokenizer, DOCUMENT, TARGET, max_length=256, use_chat_template=False)
    assert plain["input_ids"].tolist() != example["input_ids"].tolist()


def test_collator_pad_to_multiple(processor, page_image):
    example = build_example(processor, page_image, TARGET, max_length=512)
    batch = DataCollator(processor, pad_to_multiple_of=64)([example])
    assert batch["input_ids"].shape[1] % 64 == 0
    assert batch["labels"][0, len(example["labels"]) :].eq(IGNORE_INDEX).all()
