import shutil
import time

import pytest
import torch
from peft.tuners.lora.layer import ParamWrapper
from tiny_families import FAMILY_BUILDERS, example_inputs

from deepsynth.models.families import family_names
from deepsynth.models.resolver import ARCHITECTURES_DIR
from deepsynth.training.errors import ConfigError
from deepsynth.training.lora_config import LORA_PRESETS, AdapterSettings, get_lora_preset
from deepsynth.training.targets import apply_lora, count_trainable_params, resolve_targets

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
V1 = "deepseek-ai/DeepSeek-OCR"
# DeepSeek-OCR's own config.json, as the package ships it (shared/reference/deepseek-ocr/config.json).
V1_CONFIG = ARCHITECTURES_DIR / "deepseek-ocr.json"


@pytest.mark.parametrize(
    "lora, expected",
    [
        (AdapterSettings(rank=16, target_modules=ATTN), 1_966_080),
        (AdapterSettings(rank=16, target_modules=ATTN + ["down_proj"]), 2_636_800),
        (AdapterSettings(rank=16, target_modules=ATTN + ["down_proj"], include_routed_experts=True), 27_147_264),
        (AdapterSettings(rank=32, target_modules=ATTN + ["gate_proj", "up_proj", "down_proj"]), 7_956_480),
        (AdapterSettings(rank=16, target_modules=["router"]), 236_544),
    ],
)
def test_reference_counts_at_deepseek_ocr_real_dims(lora, expected):
    start = time.process_time()  # CPU time: what the count costs, whatever else the machine runs
    report = count_trainable_params(V1, lora)
    assert report.trainable == expected
    assert time.process_time() - start < 2.0
    assert report.by_group["attention"] > 0 or lora.target_modules == ["router"]


def test_full_router_training_count():
    report = count_trainable_params(V1, AdapterSettings(rank=16, target_modules=["q_proj"], modules_to_save=["gate"]))
    assert report.by_group["router"] == 901_120
    assert report.targets.router_mode == "full"


def test_groups_split_at_real_dims():
    report = count_trainable_params(V1, AdapterSettings(rank=16, target_modules=ATTN + ["down_proj"], include_routed_experts=True))
    assert report.by_group == {"attention": 1_966_080, "dense_mlp": 130_048, "shared_experts": 540_672,
                               "routed_experts": 24_510_464, "router": 0, "other": 0}


def test_deepseek_ocr2_real_dims_share_the_language_model_counts():
    report = count_trainable_params("deepseek-community/DeepSeek-OCR-2", get_lora_preset("tiny_data"))
    assert report.family == "deepseek_ocr2"
    assert report.trainable == 2_636_800


def test_attention_targets_never_reach_the_vision_encoder():
    # Unscoped PEFT names would also adapt the vision attention (4,325,376 instead of 1,966,080).
    report = count_trainable_params(V1, get_lora_preset("standard"))
    assert report.trainable == 1_966_080
    assert report.targets.peft_config.target_modules.startswith("^model\\.language_model")


def test_local_directory_is_counted_offline(tmp_path):
    # DeepSeek-OCR's own config.json (model_type deepseek_vl_v2), as a user's checkpoint dir has it.
    shutil.copy(V1_CONFIG, tmp_path / "config.json")
    assert count_trainable_params(str(tmp_path), get_lora_preset("tiny_data")).trainable == 2_636_800


def test_router_is_adapted_through_target_parameters_never_target_modules():
    model = FAMILY_BUILDERS["deepseek_ocr2"]()
    targets = resolve_targets(model, get_lora_preset("high_capacity_moe"), "deepseek_ocr2")
    assert "gate" not in targets.peft_config.target_modules.split("(")[-1].split("|")
    assert all(name.endswith("mlp.gate.weight") for name in targets.peft_config.target_parameters)
    assert targets.router_mode == "lora"


def test_router_in_both_lists_uses_lora_and_warns():
    model = FAMILY_BUILDERS["deepseek_ocr2"]()
    targets = resolve_targets(model, get_lora_preset("router_focused"), "deepseek_ocr2")
    assert targets.router_mode == "lora"
    assert not targets.peft_config.modules_to_save
    assert any("both" in w and "using LoRA" in w for w in targets.warnings)


def test_unmatched_names_are_reported():
    model = FAMILY_BUILDERS["causal_lm"]()
    targets = resolve_targets(model, AdapterSettings(target_modules=["q_proj", "router", "qkv_nope"]), "causal_lm")
    assert targets.unmatched == ["router", "qkv_nope"]
    assert any("router, qkv_nope" in w for w in targets.warnings)


def test_nothing_matching_is_an_error_listing_available_layers():
    model = FAMILY_BUILDERS["causal_lm"]()
    with pytest.raises(ConfigError, match="q_proj"):
        resolve_targets(model, AdapterSettings(target_modules=["router"]), "causal_lm")


def test_routed_experts_are_opt_in():
    model = FAMILY_BUILDERS["deepseek_ocr2"]()
    without = resolve_targets(model, get_lora_preset("balanced"), "deepseek_ocr2")
    assert not without.peft_config.target_parameters
    lora = get_lora_preset("balanced")
    lora.include_routed_experts = True
    with_experts = resolve_targets(model, lora, "deepseek_ocr2")
    assert sorted({p.rsplit(".", 1)[1] for p in with_experts.peft_config.target_parameters}) == ["down_proj", "gate_up_proj"]


def test_dropout_kept_on_module_targets_when_parameter_targets_exist():
    model = FAMILY_BUILDERS["deepseek_ocr2"]()
    targets = resolve_targets(model, get_lora_preset("router_focused"), "deepseek_ocr2")
    peft_model = apply_lora(model, targets)
    linear = [m for m in peft_model.modules() if hasattr(m, "lora_dropout") and not isinstance(m, ParamWrapper)
              and "default" in m.lora_dropout]
    params = [m for m in peft_model.modules() if isinstance(m, ParamWrapper)]
    assert linear and params
    assert all(m.lora_dropout["default"].p == 0.08 for m in linear)
    assert all(isinstance(m.lora_dropout["default"], torch.nn.Identity) for m in params)


@pytest.mark.parametrize("family", sorted(FAMILY_BUILDERS))
@pytest.mark.parametrize("preset", sorted(LORA_PRESETS))
def test_every_preset_applies_and_trains_on_every_family(family, preset):
    model = FAMILY_BUILDERS[family]()
    names = family_names(family)
    targets = resolve_targets(model, get_lora_preset(preset), family)
    peft_model = apply_lora(model, targets)
    peft_model.train()
    loss = peft_model(**example_inputs(peft_model, family)).loss
    loss.backward()
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable.values())
    # lora_B starts at zero, so it is lora_B (and full copies) that get a gradient on the first step.
    assert any(p.grad.abs().sum() > 0 for n, p in trainable.items() if "lora_B" in n or "modules_to_save" in n)
    for name, parameter in peft_model.named_parameters():
        clean = name.replace("base_model.model.", "", 1)
        if clean.startswith(names.frozen_prefixes):
            assert not parameter.requires_grad and parameter.grad is None, name
    if names.is_moe and preset in ("router_focused", "high_capacity_moe"):
        assert any(".mlp.gate." in n for n in trainable)
