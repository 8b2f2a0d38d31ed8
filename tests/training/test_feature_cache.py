"""Frozen-encoder feature cache: encoder runs once per unique image, training is unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny_families import example_inputs, tiny_llama, tiny_ocr2, tiny_ocr_v1
from transformers import Trainer, TrainingArguments, set_seed

from deepsynth.data import load_sample_dataset
from deepsynth.data.collate import DataCollator, build_example
from deepsynth.models.device import choose_experts_implementation
from deepsynth.models.loading import freeze_vision_modules, load_model_and_processor
from deepsynth.training.config import TrainerConfig
from deepsynth.models.feature_cache import (
    FEATURES_KEY,
    CachedFeatureCollator,
    CachedImageFeatures,
    cache_applicable,
    precompute_image_features,
)
from deepsynth.training.lora_config import get_lora_preset
from deepsynth.training.targets import apply_lora, resolve_targets


def _train(tmp_path, name: str, cached: bool) -> tuple[list[float], int, dict]:
    """A real Trainer run on the embedded model (tiny_data preset: LoRA dropout 0.1), 2 epochs."""
    set_seed(42)
    loaded = load_model_and_processor(None)
    # The loader pins the measured MoE experts implementation (docs/performance.md, "MoE execution").
    assert loaded.model.config.text_config._experts_implementation == choose_experts_implementation("cpu")
    targets = resolve_targets(loaded.model, get_lora_preset("tiny_data"), loaded.family)
    model = apply_lora(loaded.model, targets)
    rows = load_sample_dataset("train", max_samples=2)
    # max_length 200 (145 image positions + prompt + a cut target) keeps the test fast.
    examples = [build_example(loaded.processor, row["image"], row["summary"], max_length=200) for row in rows]
    # A third example reuses page 1 with another target: 3 examples, 2 unique images.
    examples.append(build_example(loaded.processor, rows[0]["image"], rows[1]["summary"], max_length=200))
    calls = []
    loaded.model.model.vision_tower.register_forward_hook(lambda *_: calls.append(1))
    collator = DataCollator(loaded.processor)
    stats = {}
    if cached:
        ok, reason = cache_applicable(model, loaded.family, TrainerConfig())
        assert ok, reason
        stats = precompute_image_features(model, examples).to_dict()
        assert all(FEATURES_KEY in e and "pixel_values" not in e for e in examples)
        collator = CachedFeatureCollator(collator)
    args = TrainingArguments(
        output_dir=str(tmp_path / name), per_device_train_batch_size=1, gradient_accumulation_steps=1,
        num_train_epochs=2, learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, seed=42, data_seed=42, remove_unused_columns=False, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collator)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == trainer.state.global_step == 6  # 3 examples × 2 epochs
    return losses, len(calls), stats


@pytest.mark.filterwarnings("ignore:build_example. target of")
def test_cached_run_encodes_each_image_once_and_matches_uncached_losses(tmp_path):
    plain_losses, plain_calls, _ = _train(tmp_path, "plain", cached=False)
    cached_losses, cached_calls, stats = _train(tmp_path, "cached", cached=True)
    assert plain_calls == 6  # the uncached loop encodes every page at every step: 3 examples × 2 epochs
    assert cached_calls == stats["encoder_calls"] == stats["unique_images"] == 2
    assert stats["examples"] == stats["cached_examples"] == 3
    torch.testing.assert_close(torch.tensor(cached_losses), torch.tensor(plain_losses), rtol=1e-5, atol=1e-6)
    assert sum(plain_losses[3:]) < sum(plain_losses[:3])  # it trained: epoch 2 (same examples) beats epoch 1


def _collatable(inputs: dict) -> dict:
    example = {key: value[0] if key in ("input_ids", "labels") else value for key, value in inputs.items()}
    example["attention_mask"] = torch.ones_like(example["input_ids"])
    return example


@pytest.mark.parametrize("family, build", [("deepseek_ocr2", tiny_ocr2), ("deepseek_ocr", tiny_ocr_v1)])
def test_cached_batches_give_the_same_logits_and_grads(family, build):
    model = build()
    freeze_vision_modules(model, family)
    first = _collatable(example_inputs(model, family))
    second = copy.copy(first)  # a shorter sequence on another page: padding in the batch
    second["input_ids"], second["labels"] = first["input_ids"][:-4], first["labels"][:-4]
    second["attention_mask"] = first["attention_mask"][:-4]
    second["pixel_values"] = torch.randn_like(first["pixel_values"])
    plain = [first, second]
    cached = [dict(example) for example in plain]
    assert cache_applicable(model, family) == (True, cache_applicable(model, family)[1])
    stats = precompute_image_features(model, cached)
    assert stats.encoder_calls == stats.unique_images == 2
    collator = DataCollator.__new__(DataCollator)  # padding only: these tiny models have no processor
    collator.pad_token_id, collator.pad_to_multiple_of, collator.dtype = 0, None, None
    wrapped = CachedFeatureCollator(collator)
    results = []
    for batch in (wrapped(plain), wrapped(cached)):
        model.zero_grad()
        output = model(**batch)
        output.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((output.logits.detach(), grads))
    (plain_logits, plain_grads), (cached_logits, cached_grads) = results
    torch.testing.assert_close(cached_logits, plain_logits)
    assert plain_grads.keys() == cached_grads.keys() and plain_grads
    assert not any(name.startswith("model.vision_tower") for name in cached_grads)
    for name in plain_grads:
        torch.testing.assert_close(cached_grads[name], plain_grads[name])


def test_cache_is_off_when_the_vision_path_can_change():
    model = tiny_ocr2()
    freeze_vision_modules(model, "deepseek_ocr2")
    assert cache_applicable(model, "deepseek_ocr2")[0]

    model.model.vision_tower.sam_encoder.neck.conv1.weight.requires_grad_(True)
    ok, reason = cache_applicable(model, "deepseek_ocr2")
    assert not ok and "model.vision_tower.sam_encoder.neck.conv1.weight" in reason and "trainable" in reason

    # Unscoped PEFT names (what a user would write) put LoRA on the vision encoder too.
    naive = tiny_ocr2()
    freeze_vision_modules(naive, "deepseek_ocr2")
    naive = get_peft_model(naive, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ok, reason = cache_applicable(naive, "deepseek_ocr2")
    assert not ok and "vision_tower" in reason and "lora" in reason

    frozen = tiny_ocr2()
    freeze_vision_modules(frozen, "deepseek_ocr2")
    off = TrainerConfig()
    off.use_feature_cache = False  # the field the trainer gets ("auto" = True)
    assert cache_applicable(frozen, "deepseek_ocr2", off) == (False, "disabled by the config (use_feature_cache: false)")
    frozen.config.vision_config.encoder_config.attention_dropout = 0.1
    ok, reason = cache_applicable(frozen, "deepseek_ocr2")
    assert not ok and "attention_dropout=0.1" in reason

    ok, reason = cache_applicable(tiny_llama(), "causal_lm")
    assert not ok and "text" in reason


def test_cached_batch_survives_pinning_and_device_moves(monkeypatch):
    from accelerate.utils import send_to_device
    from torch.utils.data._utils.pin_memory import pin_memory

    features = CachedImageFeatures(pooler_output=[torch.ones(3, 4), torch.zeros(2, 4)])
    batch = {"input_ids": torch.ones(2, 5, dtype=torch.long), "mm_encoder_outputs": {"image": features}}
    pinned_calls = []

    def fake_pin(tensor):  # no CUDA here: stand in for Tensor.pin_memory and count the calls
        pinned_calls.append(tuple(tensor.shape))
        return tensor.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    pinned = pin_memory(batch)  # what the DataLoader does with dataloader_pin_memory=True
    assert isinstance(pinned["mm_encoder_outputs"]["image"], CachedImageFeatures)
    assert {(3, 4), (2, 4)} <= set(pinned_calls)
    moved = send_to_device(pinned, "cpu")  # what accelerate / Trainer._prepare_input do
    torch.testing.assert_close(moved["mm_encoder_outputs"]["image"].pooler_output[1], torch.zeros(2, 4))


def test_memory_bound_leaves_examples_untouched():
    model = tiny_ocr2()
    freeze_vision_modules(model, "deepseek_ocr2")
    examples = [_collatable(example_inputs(model, "deepseek_ocr2")) for _ in range(2)]
    examples[1]["pixel_values"] = torch.randn_like(examples[0]["pixel_values"])
    stats = precompute_image_features(model, examples, max_bytes=100)
    assert stats.skipped and "max_bytes" in stats.skipped and stats.cached_examples == 0
    assert all("pixel_values" in e and FEATURES_KEY not in e for e in examples)


def test_mixed_batches_are_refused():
    collator = CachedFeatureCollator(lambda features: {})
    with pytest.raises(ValueError, match="mixes"):
        collator([{FEATURES_KEY: torch.ones(1, 1)}, {"pixel_values": torch.ones(1, 3, 2, 2)}])
