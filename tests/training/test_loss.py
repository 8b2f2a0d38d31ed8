"""Logits and loss on labelled positions only: same loss and LoRA gradients as full logits, and the switch."""

import logging

import pytest
import torch
from tiny_families import FAMILY_BUILDERS, example_inputs, lora_with_nonzero_b
from transformers import TrainingArguments

from deepsynth.training.config import OptimizerConfig, TrainerConfig
from deepsynth.training.errors import ConfigError
from deepsynth.training.lora_config import AdapterSettings
from deepsynth.models.logits import labelled_logits_support, labelled_positions, with_labelled_logits
from deepsynth.training.moe import install_moe
from deepsynth.training.trainer import MoeTrainer
from deepsynth.training.production_trainer import UnifiedProductionTrainer

VOCAB = 128  # tiny_families


def adapted(family):
    """Tiny model with LoRA on attention (+ router for the MoE families), B non-zero so every LoRA tensor learns."""
    model = FAMILY_BUILDERS[family]()
    targets = ["q_proj", "v_proj", "down_proj"] + (["gate"] if family != "causal_lm" else [])
    lora = AdapterSettings(rank=4, alpha=8, dropout=0.0, target_modules=targets)
    return lora_with_nonzero_b(model, lora, family)


def padded_batch(model, family):
    """Three rows of different lengths (right padding), different pages, one row shorter by 5, one by 2."""
    example = example_inputs(model, family)
    rows = 3
    input_ids = example["input_ids"].repeat(rows, 1)
    labels = example["labels"].repeat(rows, 1)
    attention_mask = torch.ones_like(input_ids)
    for row, cut in ((1, 5), (2, 2)):
        input_ids[row, -cut:], labels[row, -cut:], attention_mask[row, -cut:] = 0, -100, 0
    labels[2, -6] = -100  # a hole inside a target: position -7 has no label to predict, its neighbours do
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    if "pixel_values" in example:
        torch.manual_seed(3)
        batch["pixel_values"] = torch.randn((rows, *example["pixel_values"].shape[1:]))
    return batch


def loss_and_grads(trainer, model, batch, num_items, *, training=True):
    model.train(training)
    model.zero_grad()
    loss, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True, num_items_in_batch=num_items)
    if training:
        loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, outputs.logits.shape


# The dense causal LM has no router, hence no aux-loss case.
@pytest.mark.parametrize("family, aux", [("deepseek_ocr2", 0.0), ("deepseek_ocr2", 0.05), ("deepseek_ocr", 0.0),
                                         ("deepseek_ocr", 0.05), ("causal_lm", 0.0)])
def test_same_loss_and_lora_gradients_as_full_logits(tmp_path, family, aux):
    model = adapted(family)
    batch = padded_batch(model, family)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", gradient_accumulation_steps=2)
    moe = install_moe(model, family, router_aux_loss_coef=aux, telemetry=False)
    full = MoeTrainer(model=model, args=args, moe=moe, loss_on_labelled_positions=False)
    labelled = MoeTrainer(model=model, args=args, moe=moe)  # on by default
    kept = int(labelled_positions(batch["labels"]).sum())
    rows, length = batch["input_ids"].shape
    assert kept == int((batch["labels"][:, 1:] != -100).sum()) < rows * length
    # None: per-micro-batch mean; a count: the sum over this micro-batch / the tokens of the whole
    # accumulated batch (what Trainer passes under gradient accumulation).
    for num_items in (None, torch.tensor(2 * kept + 3)):
        full_loss, full_grads, full_shape = loss_and_grads(full, model, batch, num_items)
        loss, grads, shape = loss_and_grads(labelled, model, batch, num_items)
        assert full_shape == (rows, length, VOCAB) and shape == (kept, VOCAB)  # logits really were skipped
        torch.testing.assert_close(loss, full_loss, rtol=1e-6, atol=1e-7)
        assert grads.keys() == full_grads.keys()
        assert any("lora_A" in name for name in grads) and any("lora_B" in name for name in grads)
        if family != "causal_lm":
            assert any(".mlp.gate." in name for name in grads)  # the router LoRA learns too (aux or not)
        for name, grad in full_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
        # Evaluation forwards (eval_loss during training) go through the same path.
        eval_full, _, _ = loss_and_grads(full, model, batch, num_items, training=False)
        eval_labelled, _, eval_shape = loss_and_grads(labelled, model, batch, num_items, training=False)
        assert eval_shape == (kept, VOCAB)
        torch.testing.assert_close(eval_labelled, eval_full, rtol=1e-6, atol=1e-7)
    if aux:
        assert len(moe.aux_losses) == 4 and all(value > 0 for value in moe.aux_losses)


def test_mask_and_shifted_labels_select_exactly_the_predicted_tokens():
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, -100, 8, 9]])
    keep = labelled_positions(labels)
    assert keep.tolist() == [[False, True, True, False, False], [True, False, True, True, False]]
    inputs = with_labelled_logits({"labels": labels})
    assert inputs["shift_labels"].tolist() == [5, 6, 7, 8, 9]
    assert with_labelled_logits({"labels": labels, "logits_to_keep": 1}) == {"labels": labels, "logits_to_keep": 1}


def test_off_where_the_full_logits_are_needed(tmp_path, caplog):
    from transformers import BertConfig, BertForMaskedLM

    masked_lm = BertForMaskedLM(BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                           intermediate_size=16))
    assert labelled_logits_support(masked_lm) == (False, "BertForMaskedLM.forward takes no logits_to_keep")
    # A label smoother reads outputs.logits against the full labels itself: the trainer keeps full logits.
    model = adapted("causal_lm")
    batch = padded_batch(model, "causal_lm")
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", label_smoothing_factor=0.1)
    with caplog.at_level(logging.INFO, logger="deepsynth"):
        loss, _, shape = loss_and_grads(MoeTrainer(model=model, args=args), model, batch, None)
    assert "loss on labelled positions only: off (the Trainer has a label smoother" in caplog.text
    assert shape == (*batch["input_ids"].shape, VOCAB) and torch.isfinite(loss)


def test_config_switch_validates_and_round_trips():
    assert TrainerConfig().loss_on_labelled_positions is True
    off = TrainerConfig(loss_on_labelled_positions=False)
    assert TrainerConfig.from_dict(off.to_dict()).loss_on_labelled_positions is False
    with pytest.raises(ConfigError, match="loss_on_labelled_positions"):
        TrainerConfig.from_dict({"loss_on_labelled_positions": "no"})
    with pytest.raises(ConfigError, match="loss_on_labelled_positions"):
        TrainerConfig(loss_on_labelled_positions=1)


@pytest.mark.filterwarnings("ignore:build_example. target of")
def test_training_run_with_accumulation_and_aux_loss_is_unchanged(tmp_path, caplog):
    """Batches of 2 (padding), accumulation 2, aux loss, held-out eval: same losses, eval_loss and before/after."""

    def run(name, switch):
        config = TrainerConfig.from_dict(dict(
            output_dir=str(tmp_path / name), batch_size=2, gradient_accumulation_steps=2, num_epochs=2,
            max_train_samples=4, max_eval_samples=1, max_new_tokens=2, resume_from_checkpoint="never",
            checkpoint_every_updates=100, eval_every_updates=1, router_aux_loss_coef=0.05, lora_dropout=0.0,
            optimizer=OptimizerConfig(learning_rate=5e-3, scheduler_type="constant"),
            loss_on_labelled_positions=switch))
        return UnifiedProductionTrainer(config).train()[0]

    full = run("full", False)
    with caplog.at_level(logging.INFO, logger="deepsynth"):
        labelled = run("labelled", True)
    assert "loss on labelled positions only: on" in caplog.text
    assert labelled["optimizer_updates"] == full["optimizer_updates"] == 2
    for key in ("loss", "eval_loss", "aux_loss"):
        values = [entry[key] for entry in labelled["history"] if key in entry]
        expected = [entry[key] for entry in full["history"] if key in entry]
        assert values and len(values) == len(expected), key
        assert values == pytest.approx(expected, rel=1e-5), key
    assert labelled["train"]["train_loss"] == pytest.approx(full["train"]["train_loss"], rel=1e-5)
    assert labelled["eval"]["before"]["loss"] == full["eval"]["before"]["loss"]
    assert labelled["eval"]["after"]["loss"] == pytest.approx(full["eval"]["after"]["loss"], rel=1e-5)
    assert labelled["eval"]["after"]["loss"] != full["eval"]["before"]["loss"]  # it trained
