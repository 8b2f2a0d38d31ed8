"""MoE knobs through real training runs: router LoRA / full training, reload, merge, presets on v1 and OCR-2."""

import json
import logging
import re
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from deepsynth.cli import main
from deepsynth.data import load_sample_dataset
from deepsynth.data.collate import DataCollator, build_example
from deepsynth.evaluation.adapter_folder import load_adapted_model
from deepsynth.training.config import OptimizerConfig, TrainerConfig
from deepsynth.training.moe import routing_decisions
from deepsynth.training.production_trainer import UnifiedProductionTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from tiny_deepseek_ocr import write_deepseek_ocr_checkpoint  # noqa: E402

OCR2 = "deepseek_ocr2"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads; on a shared 2-core machine they spin and slow down 5-10×."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small(tmp_path, name, **overrides) -> TrainerConfig:
    settings = dict(output_dir=str(tmp_path / name), batch_size=1, num_epochs=1, gradient_accumulation_steps=1,
                    max_train_samples=3, max_eval_samples=1, max_new_tokens=2, resume_from_checkpoint="never",
                    checkpoint_every_updates=100,  # no intermediate checkpoints: faster
                    optimizer=OptimizerConfig(learning_rate=5e-3, scheduler_type="constant"))
    settings.update(overrides)
    return TrainerConfig.from_dict(settings)


class KeepModel(TrainerCallback):
    """Keeps the trained (in-memory) model of a run."""

    model = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.model = model


def fixed_batch(processor):
    row = load_sample_dataset("eval", max_samples=1)[0]
    return DataCollator(processor)([build_example(processor, row["image"], row["summary"])])


def effective_router_weights(model) -> dict[str, torch.Tensor]:
    """Router weight per MoE layer as the forward sees it: base + LoRA delta, or the trained full copy."""
    weights = {}
    for name, module in model.named_modules():
        if not name.endswith("mlp.gate"):
            continue
        layer = name.removeprefix("base_model.model.").removesuffix(".mlp.gate")
        if hasattr(module, "get_delta_weight"):  # PEFT ParamWrapper (router LoRA)
            weights[layer] = module.get_base_layer().weight + module.get_delta_weight("default")
        elif hasattr(module, "modules_to_save"):  # PEFT ModulesToSaveWrapper (full router)
            weights[layer] = module.modules_to_save["default"].weight
        else:
            weights[layer] = module.weight
    return {layer: w.detach().clone() for layer, w in weights.items()}


def page_as_features(model, batch):
    """``batch`` with its page as the features ``model`` (vision path whole) computes for it.

    The trained model's frozen vision path was released once the run's pages were encoded
    (deepsynth.models.memory); the reloaded model's is the same frozen weights.
    """
    from deepsynth.models.feature_cache import IMAGE_INPUT_KEYS, CachedImageFeatures

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.no_grad():
        (features,) = base.get_image_features(**{k: batch[k] for k in IMAGE_INPUT_KEYS if k in batch},
                                              return_dict=True).pooler_output
    rest = {key: value for key, value in batch.items() if key not in IMAGE_INPUT_KEYS}
    return {**rest, "mm_encoder_outputs": {"image": CachedImageFeatures(pooler_output=[features])}}


def check_reload_and_merge(paths, trained, base_router):
    """Router changed; reloading gives the same routing and logits; merging gives the same logits."""
    trained_router = effective_router_weights(trained)
    assert trained_router.keys() == base_router.keys() and len(trained_router) == 3
    assert all(not torch.allclose(trained_router[layer], base_router[layer]) for layer in base_router)
    adapted = load_adapted_model(paths["adapter"])
    for layer, weight in effective_router_weights(adapted.model).items():
        torch.testing.assert_close(weight, trained_router[layer])
    batch = fixed_batch(adapted.loaded.processor)
    trained_batch = page_as_features(adapted.model, batch)
    trained.eval()
    routes = routing_decisions(trained, OCR2, trained_batch)
    reloaded_routes = routing_decisions(adapted.model, OCR2, batch)
    assert routes.keys() == reloaded_routes.keys() and len(routes) == 3
    assert all(torch.equal(routes[layer], reloaded_routes[layer]) for layer in routes)
    with torch.no_grad():
        reloaded_logits = adapted.model(**batch).logits
        torch.testing.assert_close(reloaded_logits, trained(**trained_batch).logits)
        merged = adapted.model.merge_and_unload()
        assert not any("lora_" in name or "modules_to_save" in name for name, _ in merged.named_parameters())
        torch.testing.assert_close(merged(**batch).logits, reloaded_logits, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(routing_decisions(merged, OCR2, batch).values(), routes.values()))


def base_router_weights():
    from deepsynth.models.loading import load_model_and_processor

    return effective_router_weights(load_model_and_processor(None).model)


def test_router_lora_run_with_every_knob(tmp_path, caplog):
    # router_focused lists the router in target_modules AND modules_to_save: LoRA wins, with a warning.
    keep = KeepModel()
    config = small(tmp_path, "lora", preset="router_focused", max_train_samples=2, gate_dropout_rate=0.2, expert_dropout_rate=0.25,
                   router_aux_loss_coef=0.01)
    with caplog.at_level(logging.WARNING, logger="deepsynth"):
        metrics, paths = UnifiedProductionTrainer(config, callbacks=[keep]).train()
    assert "listed in both target_modules (LoRA) and modules_to_save" in caplog.text
    targets = metrics["resolved_targets"]
    assert targets["router_mode"] == "lora" and targets["modules_to_save"] == []
    assert targets["target_parameters"] == [f"model.language_model.layers.{i}.mlp.gate.weight" for i in (1, 2, 3)]
    assert metrics["trainable_params"]["by_group"]["router"] > 0

    moe = json.loads(paths["metrics"].read_text())["moe"]
    assert moe["router_mode"] == "lora" and moe["gate_dropout_active"] and moe["expert_dropout_active"]
    assert moe["gate_dropout_tensors"] == 6  # lora_A and lora_B of 3 routers
    assert 0.1 < moe["gate_dropout_dropped_fraction"] < 0.3 and 0.15 < moe["expert_dropout_withheld_fraction"] < 0.35
    assert moe["aux_loss_active"] and moe["aux_loss_mean"] >= 2 - 1e-4  # >= top_k
    logs = [json.loads(line) for line in paths["progress"].read_text().splitlines()]
    logs = [entry for entry in logs if entry["event"] == "log"]
    assert len(logs) == 2 and all(entry["aux_loss"] >= 2 - 1e-4 for entry in logs)

    utilization = metrics["expert_utilization"]
    for phase in ("train", "eval"):
        summary = utilization[phase]["summary"]
        assert summary["tokens"] > 0 and len(utilization[phase]["layers"]) == 3
        assert all(sum(counts) == summary["tokens"] * 2 and len(counts) == 8
                   for counts in utilization[phase]["layers"].values())
    assert paths["expert_utilization"].is_file()
    check_reload_and_merge(paths, keep.model, base_router_weights())


def test_full_router_run(tmp_path):
    keep = KeepModel()
    config = small(tmp_path, "full", lora_target_modules=["q_proj", "v_proj"], lora_modules_to_save=["gate"],
                   lora_rank=4, lora_alpha=8, gate_dropout_rate=0.1)
    metrics, paths = UnifiedProductionTrainer(config, callbacks=[keep]).train()
    assert metrics["resolved_targets"]["router_mode"] == "full" and metrics["moe"]["gate_dropout_active"]
    assert metrics["trainable_params"]["by_group"]["router"] == 3 * 8 * 128  # 3 routers [8 experts, 128]
    check_reload_and_merge(paths, keep.model, base_router_weights())


def test_frozen_router_gate_dropout_is_inactive_and_expert_dropout_still_acts(tmp_path, caplog):
    config = small(tmp_path, "frozen", preset="tiny_data", gate_dropout_rate=0.1, expert_dropout_rate=0.2,
                   max_train_samples=1)
    with caplog.at_level(logging.WARNING, logger="deepsynth"):
        UnifiedProductionTrainer(config).train()
    assert "gate dropout is INACTIVE (gate_dropout_rate 0.1): the router is frozen" in caplog.text
    saved = json.loads((tmp_path / "frozen" / "metrics.json").read_text())
    assert saved["moe"]["router_mode"] is None and saved["moe"]["gate_dropout_active"] is False
    assert saved["moe"]["expert_dropout_active"] is True and saved["moe"]["expert_dropout_withheld_fraction"] > 0
    assert any("INACTIVE" in warning for warning in saved["moe"]["warnings"])


@pytest.fixture(scope="module")
def v1_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("deepseek-ocr-v1")
    write_deepseek_ocr_checkpoint(directory)
    return directory


# router_focused on the embedded model: test_router_lora_run_with_every_knob.
@pytest.mark.parametrize("model, preset", [("embedded", "high_capacity_moe"), ("v1", "router_focused"),
                                           ("v1", "high_capacity_moe")])
def test_moe_presets_train_on_ocr2_and_v1(tmp_path, preset, model, request):
    model_name = None if model == "embedded" else str(request.getfixturevalue("v1_checkpoint"))
    config = small(tmp_path, f"{model}-{preset}", model_name=model_name, preset=preset, max_train_samples=1,
                   expert_dropout_rate=0.1, router_aux_loss_coef=0.01, max_new_tokens=2)
    metrics, paths = UnifiedProductionTrainer(config).train()
    assert metrics["model_family"] == ("deepseek_ocr2" if model == "embedded" else "deepseek_ocr")
    assert metrics["optimizer_updates"] == 1
    assert metrics["resolved_targets"]["router_mode"] == "lora" and metrics["trainable_params"]["by_group"]["router"] > 0
    layers = metrics["expert_utilization"]["train"]["layers"]
    assert len(layers) == (3 if model == "embedded" else 1)  # v1 tiny: layer 0 dense, layer 1 MoE
    assert metrics["moe"]["aux_loss_active"] and metrics["moe"]["expert_dropout_active"]
    assert paths["expert_utilization"].is_file()


@pytest.mark.parametrize("model", ["embedded", "v1"])
def test_inspect_shows_the_router_group(model, request, capsys):
    model_name = "deepsynth/tiny-ocr2" if model == "embedded" else str(request.getfixturevalue("v1_checkpoint"))
    assert main(["inspect", "--model", model_name, "--preset", "router_focused"]) == 0
    text = capsys.readouterr().out
    router_rows = [line.split() for line in text.splitlines() if re.fullmatch(r"router\s+[\d,]+", line.strip())]
    assert len(router_rows) == 1 and int(router_rows[0][1].replace(",", "")) > 0  # the router group, counted
    assert "router: lora" in text and "mlp.gate.weight" in text and "listed in both" in text
