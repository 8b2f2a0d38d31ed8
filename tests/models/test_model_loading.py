"""load_model_and_processor: every family, freezing, dtype, checkpointing, errors."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    DeepseekOcr2ForConditionalGeneration,
    LlamaConfig,
    LlamaForCausalLM,
    UnlimitedOcrForConditionalGeneration,
    UnlimitedOcrProcessor,
)

from tiny_deepseek_ocr import (
    DEEPSEEK_OCR_KEY_PATTERNS,
    V1_IMAGE_TOKENS,
    key_pattern,
    reference_dir,
    write_deepseek_ocr_checkpoint,
)
from deepsynth.data.collate import DataCollator, build_example
from deepsynth.models import tiny
from deepsynth.models.device import resolve_device, resolve_dtype
from deepsynth.models.loading import LoadedModel, ModelLoadError, load_model_and_processor
from deepsynth.models.processors import build_deepseek_ocr_processor

# ------------------------------------------------------------------------------------------------
# Embedded default and DeepSeek-OCR-2 directories
# ------------------------------------------------------------------------------------------------


def test_default_is_the_embedded_tiny_model():
    loaded = load_model_and_processor()
    assert isinstance(loaded, LoadedModel)
    assert (loaded.family, loaded.name) == ("deepseek_ocr2", tiny.EMBEDDED_MODEL_NAME)
    assert isinstance(loaded.model, DeepseekOcr2ForConditionalGeneration)
    assert loaded.model.dtype == torch.float32 and loaded.model.device.type == "cpu"
    assert loaded.tokenizer is loaded.processor.tokenizer
    vision = [p for n, p in loaded.model.named_parameters() if n.startswith(("model.vision_tower", "model.multi_modal_projector"))]
    assert vision and not any(p.requires_grad for p in vision)
    assert not loaded.model.model.view_separator.requires_grad
    assert all(p.requires_grad for p in loaded.model.model.language_model.parameters())


def test_freeze_vision_false_leaves_everything_trainable():
    loaded = load_model_and_processor(tiny.EMBEDDED_MODEL_NAME, freeze_vision=False)
    assert all(p.requires_grad for p in loaded.model.parameters())


def test_explicit_dtype_and_gradient_checkpointing(page_image):
    loaded = load_model_and_processor(None, dtype="bf16", device="cpu")
    assert loaded.model.dtype == torch.bfloat16
    example = build_example(loaded.processor, page_image, "Résumé court.", max_length=300)
    batch = DataCollator(loaded.processor, dtype=loaded.model.dtype)([example])
    assert batch["pixel_values"].dtype == torch.bfloat16 and batch["input_ids"].dtype == torch.long
    with torch.no_grad():
        assert torch.isfinite(loaded.model(**batch).loss)

    loaded = load_model_and_processor(None, gradient_checkpointing=True)
    model = loaded.model
    assert model.is_activation_checkpointing
    assert model.config.text_config.use_cache is False
    model.train()
    batch = DataCollator(loaded.processor)([build_example(loaded.processor, page_image, "Résumé court.", max_length=300)])
    model(**batch).loss.backward()
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad is not None


def test_dtype_and_device_defaults():
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert resolve_dtype(torch.float16, cpu) == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float8", cpu)
    assert resolve_device("cpu") == cpu
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_local_deepseek_ocr2_directory(tmp_path):
    model, processor = tiny.build_embedded_model(seed=3)
    model.save_pretrained(str(tmp_path))
    processor.save_pretrained(str(tmp_path))
    loaded = load_model_and_processor(str(tmp_path))
    assert loaded.family == "deepseek_ocr2"
    assert loaded.loading_info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}
    reference = model.state_dict()
    assert all(torch.equal(reference[k], v) for k, v in loaded.model.state_dict().items())
    assert loaded.processor.image_processor.size["height"] == tiny.IMAGE_SIZE


# ------------------------------------------------------------------------------------------------
# DeepSeek-OCR v1 (deepseek_vl_v2 checkpoints) through transformers' unlimited_ocr
# ------------------------------------------------------------------------------------------------


def test_v1_fixture_uses_deepseek_ocr_real_names(deepseek_ocr_checkpoint):
    directory, native = deepseek_ocr_checkpoint
    saved = load_file(str(directory / "model.safetensors"))
    assert {key_pattern(name) for name in saved} == DEEPSEEK_OCR_KEY_PATTERNS
    # Cross-check: transformers' own save of the native model writes the same names and tensors
    # (all but the unused CLIP patch embedding, which the native class does not have).
    native.save_pretrained(str(directory.parent / "native-save"))
    by_transformers = load_file(str(directory.parent / "native-save" / "model.safetensors"))
    assert set(by_transformers) == set(saved) - {"model.vision_model.embeddings.patch_embedding.weight"}
    assert all(torch.equal(by_transformers[k], saved[k]) for k in by_transformers)


def test_v1_names_match_reference():
    index = json.loads((reference_dir() / "model.safetensors.index.json").read_text(encoding="utf-8"))
    assert {key_pattern(name) for name in index["weight_map"]} == DEEPSEEK_OCR_KEY_PATTERNS


def test_v1_checkpoint_loads_exactly(deepseek_ocr_checkpoint):
    directory, native = deepseek_ocr_checkpoint
    loaded = load_model_and_processor(str(directory))
    model = loaded.model
    assert loaded.family == "deepseek_ocr"
    assert isinstance(model, UnlimitedOcrForConditionalGeneration)
    assert isinstance(loaded.processor, UnlimitedOcrProcessor)
    assert loaded.loading_info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}
    expected = native.state_dict()
    actual = model.state_dict()
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[k], expected[k]) for k in expected)
    # DeepSeek-OCR attends to the whole sequence: the native sliding window must not cut it.
    text = model.config.text_config
    assert text.sliding_window >= text.max_position_embeddings
    assert model.config.image_token_id == tiny.IMAGE_TOKEN_ID  # taken from the tokenizer
    # Vision side frozen, row newline included.
    for name, parameter in model.named_parameters():
        is_vision = name.startswith(("model.vision_tower.", "model.multi_modal_projector.", "model.view_separator", "model.image_newline"))
        assert parameter.requires_grad != is_vision, name


def test_v1_processor_matches_the_model(deepseek_ocr_checkpoint, page_image):
    directory, _ = deepseek_ocr_checkpoint
    loaded = load_model_and_processor(str(directory))
    example = build_example(loaded.processor, page_image, "Budget voté.", max_length=100)
    assert int((example["input_ids"] == tiny.IMAGE_TOKEN_ID).sum()) == V1_IMAGE_TOKENS
    assert example["pixel_values"].shape == (1, 3, 256, 256)
    batch = DataCollator(loaded.processor)([example, example])
    loaded.model.train()
    loss = loaded.model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert loaded.model.lm_head.weight.grad is not None


def test_v1_processor_defaults_are_deepseek_ocr_base_mode():
    settings = json.loads((reference_dir() / "processor_config.json").read_text())
    processor = build_deepseek_ocr_processor(tiny.shipped_tokenizer(), settings)
    page = Image.new("RGB", (600, 800), "white")
    inputs = processor(images=page, text="<image>\nFree OCR.", return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 1024, 1024)
    assert int((inputs["input_ids"] == tiny.IMAGE_TOKEN_ID).sum()) == 16 * 17 + 1  # DeepSeek-OCR Base: 273

    # A processor config saved by transformers nests the size; 640 px = DeepSeek-OCR Small, resized square.
    saved_by_transformers = {"patch_size": 16, "downsample_ratio": 4, "image_processor": {"size": {"height": 640, "width": 640}}}
    processor = build_deepseek_ocr_processor(tiny.shipped_tokenizer(), saved_by_transformers)
    inputs = processor(images=page, text="<image>\nFree OCR.", return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 640, 640)
    assert int((inputs["input_ids"] == tiny.IMAGE_TOKEN_ID).sum()) == 10 * 11 + 1


@pytest.mark.parametrize(
    ("removed", "reported"),
    [
        ("model.norm.weight", "missing_keys: model.language_model.norm.weight"),
        # One expert short: transformers would stack 3 experts into a 4-expert tensor and re-init it.
        ("model.layers.1.mlp.experts.0.down_proj.weight", "could not load the weights"),
    ],
)
def test_v1_checkpoint_with_a_missing_tensor_is_refused(tmp_path, removed, reported):
    write_deepseek_ocr_checkpoint(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state[removed]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=reported):
        load_model_and_processor(str(tmp_path))


# ------------------------------------------------------------------------------------------------
# Text causal LMs
# ------------------------------------------------------------------------------------------------


@pytest.fixture()
def causal_lm_dir(tmp_path):
    tokenizer = tiny.shipped_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(tmp_path))
    tokenizer.save_pretrained(str(tmp_path))
    return tmp_path, model


def test_causal_lm_directory_loads(causal_lm_dir):
    directory, original = causal_lm_dir
    loaded = load_model_and_processor(str(directory))
    assert loaded.family == "causal_lm"
    assert isinstance(loaded.model, LlamaForCausalLM)
    assert loaded.tokenizer is loaded.processor and loaded.tokenizer.pad_token_id is not None
    assert loaded.loading_info["missing_keys"] == [] and loaded.loading_info["unexpected_keys"] == []
    expected = original.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.model.state_dict().items())
    assert not loaded.is_multimodal


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model: .*does not exist"):
        load_model_and_processor(str(tmp_path / "no" / "such-model"))


def test_directory_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model: .*config\.json"):
        load_model_and_processor(str(tmp_path))


def test_directory_without_weights_is_a_clear_error(tmp_path):
    tiny.embedded_config().save_pretrained(str(tmp_path))
    tiny.build_processor().save_pretrained(str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"model: could not load the weights from directory"):
        load_model_and_processor(str(tmp_path))


@pytest.mark.parametrize("name", ["not-a-model", "some-org/unknown-model"])
def test_unknown_names_are_clear_errors_offline(name, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=r"^model: .*" + name):
        load_model_and_processor(name)


def test_known_hub_name_without_cached_weights_offline(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"deepseek-community/DeepSeek-OCR-2.*offline"):
        load_model_and_processor("deepseek-community/DeepSeek-OCR-2")
