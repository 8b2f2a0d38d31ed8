"""QLoRA for real: bases held in 4/8 bits by bitsandbytes on this CPU, LoRA trained on top, reloaded, merged."""

from __future__ import annotations

import json
import subprocess
import sys

import bitsandbytes as bnb
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import LlamaConfig, LlamaForCausalLM

from deepsynth.cli import main
from deepsynth.data import load_sample_dataset
from deepsynth.data.collate import DataCollator, build_example
from deepsynth.models import tiny
from deepsynth.evaluation.adapter_folder import load_adapted_model
from deepsynth.models.adapters import attach_adapter
from deepsynth.models.resolver import resolve_config
from deepsynth.evaluation.export import merge_adapter
from deepsynth.models.loading import load_model_and_processor
from deepsynth.models.quantization.dequantize import dequantize_fused_experts, dequantize_model
from deepsynth.models.quantization.report import estimate_quantization, quantization_report
from deepsynth.publishing.model_card import render_model_card
from deepsynth.training.lora_config import get_lora_preset
from deepsynth.training.targets import apply_lora, resolve_targets

LINEAR = {"4bit": bnb.nn.Linear4bit, "8bit": bnb.nn.Linear8bitLt}
QUANTIZATIONS = ("4bit", "8bit")


def _batch(loaded, rows: int = 2) -> dict[str, torch.Tensor]:
    data = load_sample_dataset("train", max_samples=rows)
    if loaded.is_multimodal:
        examples = [build_example(loaded.processor, r["image"], r["summary"], max_length=512) for r in data]
    else:
        examples = [build_example(loaded.processor, r["text"], r["summary"], max_length=512) for r in data]
    return DataCollator(loaded.processor)(examples)


def _train(model, batch, steps: int = 4, lr: float = 5e-3) -> tuple[list[float], dict[str, torch.Tensor]]:
    """A few AdamW updates; returns the losses and the trainable tensors before training."""
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, before


def _moved(model, before: dict[str, torch.Tensor]) -> set[str]:
    current = dict(model.named_parameters())
    return {n for n, value in before.items() if not torch.equal(current[n].detach(), value)}


@pytest.fixture()
def causal_lm_dir(tmp_path):
    tokenizer = tiny.shipped_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(tmp_path))
    tokenizer.save_pretrained(str(tmp_path))
    return tmp_path


# ------------------------------------------------------------------------------------------------
# What is quantized, and how much of the base that is
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_embedded_model_trains_under_each_quantized_preset(quantization):
    loaded = load_model_and_processor(None, quantization=quantization)
    model, lm = loaded.model, loaded.model.model.language_model
    # Language-model linears quantized; vision side, router and lm_head left in full precision.
    assert isinstance(lm.layers[0].self_attn.q_proj, LINEAR[quantization])
    assert isinstance(lm.layers[1].mlp.shared_experts.down_proj, LINEAR[quantization])
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight.dtype == torch.float32
    vision = [m for n, m in model.named_modules() if n.startswith(("model.vision_tower", "model.multi_modal_projector"))]
    assert vision and not any(isinstance(m, tuple(LINEAR.values())) for m in vision)
    assert type(lm.layers[1].mlp.gate.weight) is nn.Parameter and lm.layers[1].mlp.gate.weight.dtype == torch.float32
    # The fused routed experts are held in 4/8 bits too (dequantized on access).
    experts = lm.layers[1].mlp.experts
    assert parametrize.is_parametrized(experts, "gate_up_proj") and parametrize.is_parametrized(experts, "down_proj")
    assert experts.parametrizations.down_proj.original.dtype in (torch.uint8, torch.int8)

    # The report counts what is held, and equals the meta-device estimate `inspect` prints.
    report = quantization_report(model)
    resolved = resolve_config(None)
    meta = resolved.build_on_meta()
    estimate = estimate_quantization(meta, resolved.family, quantization)
    assert report["base_params"] == sum(p.numel() for p in meta.parameters())
    assert report["quantized_by_kind"] == estimate["quantized_by_kind"]
    assert report["quantized_by_kind"]["fused_experts"] == sum(
        p.numel() for n, p in meta.named_parameters() if ".mlp.experts." in n)
    assert report["bits"] == int(quantization[0])

    targets = resolve_targets(model, get_lora_preset(f"qlora_{quantization}"), loaded.family)
    peft_model = apply_lora(model, targets)
    losses, before = _train(peft_model, _batch(loaded))
    assert losses[-1] < losses[0]
    assert _moved(peft_model, before) == set(before)


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_tiny_causal_lm_trains_under_each_quantized_preset(causal_lm_dir, quantization):
    loaded = load_model_and_processor(str(causal_lm_dir), quantization=quantization)
    layer = loaded.model.model.layers[0]
    assert isinstance(layer.self_attn.q_proj, LINEAR[quantization])
    assert isinstance(layer.mlp.down_proj, LINEAR[quantization])
    assert type(loaded.model.lm_head) is nn.Linear
    report = quantization_report(loaded.model)
    linears = sum(m.weight.numel() for n, m in LlamaForCausalLM(LlamaForCausalLM.config_class.from_pretrained(
        str(causal_lm_dir))).named_modules() if type(m) is nn.Linear and n != "lm_head")
    assert report["quantized_params"] == linears and report["quantized_by_kind"]["fused_experts"] == 0

    peft_model = apply_lora(loaded.model, resolve_targets(loaded.model, get_lora_preset(f"qlora_{quantization}"),
                                                          loaded.family))
    losses, before = _train(peft_model, _batch(loaded), lr=1e-2)
    assert losses[-1] < losses[0]
    assert _moved(peft_model, before) == set(before)


def test_inspect_states_the_quantized_fraction(capsys):
    # The embedded model is mostly vision encoder: 4-bit covers less than half of it, and says so.
    assert main(["inspect", "--preset", "qlora_4bit", "--json"]) == 0
    embedded = json.loads(capsys.readouterr().out)["quantization"]
    assert embedded["quantized_fraction"] < 0.5 and embedded["description"].startswith("mostly full precision")
    # DeepSeek-OCR at its real dimensions: the routed experts are most of the weights.
    assert main(["inspect", "--preset", "qlora_4bit", "--model", "deepseek-ai/DeepSeek-OCR"]) == 0
    out = capsys.readouterr().out
    assert "78.0% of the base weights (2,602,844,160 of 3,335,504,128 parameters) held in 4 bits" in out


# ------------------------------------------------------------------------------------------------
# Routed-expert LoRA (PEFT target_parameters) on 4/8-bit fused experts
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_routed_expert_lora_trains_on_quantized_experts(quantization, tmp_path):
    loaded = load_model_and_processor(None, quantization=quantization)
    lora = get_lora_preset("high_capacity_moe")
    lora.include_routed_experts, lora.dropout = True, 0.0
    targets = resolve_targets(loaded.model, lora, loaded.family)
    assert any(t.endswith("experts.gate_up_proj") for t in targets.peft_config.target_parameters)
    assert any(t.endswith("experts.down_proj") for t in targets.peft_config.target_parameters)
    peft_model = apply_lora(loaded.model, targets)
    batch = _batch(loaded)
    losses, before = _train(peft_model, batch, steps=3)
    assert losses[-1] < losses[0]
    # Every LoRA tensor trained, both wrappers of each experts module included (gate_up and down).
    moved = _moved(peft_model, before)
    assert moved == set(before)
    assert sum(".mlp.experts." in n and "lora_A" in n for n in moved) == 2 * 3  # 3 MoE layers

    # The expert LoRA trained on the dequantized experts: the same adapter on a base whose experts
    # are plain dequantized tensors (as a full-precision base has) gives the same logits.
    peft_model.eval()
    with torch.no_grad():
        trained = peft_model(**batch).logits
    peft_model.save_pretrained(str(tmp_path))
    fresh = load_model_and_processor(None, quantization=quantization)
    assert dequantize_fused_experts(fresh.model) == 2 * 3
    plain = attach_adapter(fresh.model, tmp_path).eval()  # adapter names as on a full-precision base
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, trained, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# End to end: deepsynth train --preset qlora_4bit, reload, merge
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qlora") / "run"
    argv = ["train", "--preset", "qlora_4bit", "--output-dir", str(out), "--max-train-samples", "2",
            "--max-eval-samples", "1", "--epochs", "3", "--grad-accum", "1", "--max-new-tokens", "4",
            "--learning-rate", "0.005", "--resume", "never", "--instruction", "Free OCR."]
    assert main(argv) == 0
    return out


def test_cli_train_qlora_4bit_reports_the_quantized_base(qlora_run):
    metrics = json.loads((qlora_run / "metrics.json").read_text())
    quantization = metrics["quantization"]
    assert quantization["bits"] == 4 and quantization["quantization"] == "4bit"
    assert quantization["quantized_params"] == quantization["quantized_by_kind"]["linear"] + \
        quantization["quantized_by_kind"]["fused_experts"] > 0
    assert 0 < quantization["quantized_fraction"] < 1
    losses = [h["loss"] for h in metrics["history"] if "loss" in h]
    assert len(losses) == metrics["optimizer_updates"] == 6 and losses[-1] < losses[0]
    card = (qlora_run / "README.md").read_text()
    assert quantization["description"] in card


def test_model_card_never_calls_a_mostly_full_precision_base_4bit():
    report = {"bits": 4, "quantized_fraction": 0.2,
              "description": "mostly full precision: only 20.0% of the base weights (1 of 5 parameters) "
                             "are held in 4 bits; the rest in full precision",
              "method": "bitsandbytes NF4 + double quantization"}
    card = render_model_card({"lora_quantization": "4bit"}, {"quantization": report})
    assert "mostly full precision: only 20.0%" in card


def test_adapter_reloads_on_quantized_and_full_precision_base(qlora_run):
    quantized = load_adapted_model(qlora_run)  # as trained: the 4-bit base
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in quantized.model.modules())
    full = load_adapted_model(qlora_run, quantization=None)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in full.model.modules())
    batch = _batch(quantized.loaded, rows=1)
    with torch.no_grad():
        q_logits, f_logits = quantized.model(**batch).logits, full.model(**batch).logits
        assert (q_logits - f_logits).abs().max() > 0  # two different bases ...
        assert (q_logits.argmax(-1) == f_logits.argmax(-1)).float().mean() > 0.5  # ... that mostly agree
        for adapted in (quantized, full):
            prompt = {k: v for k, v in batch.items() if k not in ("labels",)}
            generated = adapted.model.generate(**prompt, max_new_tokens=5, do_sample=False)
            assert generated.shape[1] > batch["input_ids"].shape[1]


def test_merge_goes_through_the_dequantized_base(qlora_run, tmp_path):
    merged, loaded, _, dequantized = merge_adapter(qlora_run)
    assert dequantized == "4bit"
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    assert not any(parametrize.is_parametrized(m) for m in merged.modules())
    assert getattr(merged.config, "quantization_config", None) is None
    # merged = dequantized 4-bit base + adapter (not the original full-precision base + adapter).
    base = load_model_and_processor(None, quantization="4bit")
    unmerged = attach_adapter(dequantize_model(base.model), qlora_run).eval()
    original = load_adapted_model(qlora_run, quantization=None).model.merge_and_unload()
    quantized = load_adapted_model(qlora_run).model  # as trained: bitsandbytes' 4-bit CPU kernels
    batch = _batch(loaded, rows=1)
    with torch.no_grad():
        reference = merged(**batch).logits
        torch.testing.assert_close(unmerged(**batch).logits, reference, rtol=1e-4, atol=1e-4)
        trained = quantized(**batch).logits
        merged_into_original = original(**batch).logits
    # bitsandbytes' CPU 4-bit matmul runs in bf16, so the trained model is not reproduced bit for bit;
    # but the merge through the dequantized base is several times closer to it than a merge into the
    # original full-precision weights.
    through_dequantized = (trained - reference).abs().mean().item()
    assert 3 * through_dequantized < (trained - merged_into_original).abs().mean().item()

    out = tmp_path / "merged"
    assert main(["export", "--adapter", str(qlora_run), "--merge", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "deepseek_ocr2"
    reloaded = load_model_and_processor(str(out))
    assert quantization_report(reloaded.model) is None
    with torch.no_grad():  # exported in the embedded base's own dtype (fp32): the merged model itself
        torch.testing.assert_close(reloaded.model(**batch).logits, reference, rtol=1e-4, atol=1e-4)


def test_quantized_preset_without_bitsandbytes_fails_at_once(tmp_path):
    # bitsandbytes made unimportable, as on a machine without the [qlora] extra.
    code = ("import sys; sys.modules['bitsandbytes'] = None\n"
            "from deepsynth.cli import main\n"
            f"sys.exit(main(['train', '--preset', 'qlora_4bit', '--output-dir', {str(tmp_path / 'run')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pip install 'deepsynth[qlora]'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_an_evaluation_before_training_leaves_gradients_intact(quantization):
    # bitsandbytes repacks CPU 4-bit weights for an inference kernel without autograd on the first
    # no-grad forward; the trainer evaluates the base model before training, so that evaluation
    # must not change the gradients of the training step after it.
    def gradients(evaluate_first: bool) -> dict[str, torch.Tensor]:
        loaded = load_model_and_processor(None, quantization=quantization)
        torch.manual_seed(0)  # the same LoRA init in both runs
        model = apply_lora(loaded.model, resolve_targets(loaded.model, get_lora_preset("qlora_4bit"), loaded.family))
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.05)
        batch = _batch(loaded, rows=1)
        model.eval()  # no dropout: the two runs compute the same thing
        if evaluate_first:
            with torch.no_grad():
                model(**batch)
        model(**batch).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    fresh, after_evaluation = gradients(False), gradients(True)
    assert all(after_evaluation[n] is not None for n in fresh)
    for name, gradient in fresh.items():
        torch.testing.assert_close(after_evaluation[name], gradient, rtol=0, atol=0, msg=name)
