import pytest

from deepsynth.training.errors import ConfigError
from deepsynth.training.config import TrainerConfig
from deepsynth.training.lora_config import (
    DEFAULT_ADAPTER,
    FLAT_FIELDS,
    LORA_PRESETS,
    AdapterSettings,
    adapter_settings,
    get_lora_preset,
)

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_all_presets_present():
    assert set(LORA_PRESETS) == {"minimal", "standard", "high_capacity", "qlora_4bit", "qlora_8bit",
                                 "tiny_data", "balanced", "router_focused", "high_capacity_moe"}


@pytest.mark.parametrize("name, rank, alpha, dropout, targets, saved", [
    ("tiny_data", 16, 32, 0.1, ATTN + ["down_proj"], []),
    ("balanced", 32, 64, 0.08, ATTN + ["gate_proj", "up_proj", "down_proj"], []),
    ("router_focused", 16, 32, 0.08, ATTN + ["down_proj", "router", "gate"], ["router", "gate"]),
    ("high_capacity_moe", 64, 128, 0.05, ATTN + ["gate_proj", "up_proj", "down_proj", "router", "gate"], []),
])
def test_seed_presets_as_written(name, rank, alpha, dropout, targets, saved):
    preset = get_lora_preset(name)
    assert (preset.rank, preset.alpha, preset.dropout) == (rank, alpha, dropout)
    assert preset.target_modules == targets
    assert preset.modules_to_save == saved
    assert preset.include_routed_experts is False  # routed experts are an explicit opt-in


def test_get_lora_preset_returns_an_independent_copy():
    copy = get_lora_preset("tiny_data")
    copy.target_modules.append("up_proj")
    copy.rank = 99
    assert LORA_PRESETS["tiny_data"].rank == 16
    assert "up_proj" not in get_lora_preset("tiny_data").target_modules


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="tiny_data"):
        get_lora_preset("tiny")


@pytest.mark.parametrize("name", sorted(LORA_PRESETS))
def test_to_dict_from_dict_round_trip(name):
    preset = get_lora_preset(name)
    assert AdapterSettings.from_dict(preset.to_dict()) == preset


@pytest.mark.parametrize("kwargs", [{"rank": 0}, {"alpha": -1}, {"dropout": 1}, {"bias": "x"}, {"target_modules": []}])
def test_invalid_lora_config(kwargs):
    with pytest.raises(ConfigError):
        AdapterSettings(**kwargs)


def test_one_default_the_trainer_configs():
    # The design guide's flat TrainerConfig defaults (rank 32, alpha 64, dropout 0.08, attention +
    # down_proj) are the one default: a TrainerConfig's settings and the settings built without a
    # preset (the web estimate's) are the same.
    assert TrainerConfig().lora_config() == DEFAULT_ADAPTER == adapter_settings() == AdapterSettings()
    assert (DEFAULT_ADAPTER.rank, DEFAULT_ADAPTER.alpha, DEFAULT_ADAPTER.dropout) == (32, 64, 0.08)
    assert DEFAULT_ADAPTER.target_modules == ATTN + ["down_proj"]


def test_flat_fields_round_trip_and_name_the_flat_field():
    for name in sorted(LORA_PRESETS):
        preset = get_lora_preset(name)
        assert AdapterSettings.from_flat(preset.to_flat()) == preset
        assert TrainerConfig.from_dict(preset.to_flat()).lora_config() == preset
    assert set(FLAT_FIELDS) == {name for name in TrainerConfig.__dataclass_fields__
                                if name.startswith("lora_") or name == "use_lora"}
    with pytest.raises(ConfigError) as error:
        AdapterSettings.from_flat({"lora_rank": 0})
    assert error.value.field == "lora_rank"


def test_adapter_settings_start_from_the_preset_then_the_overrides():
    settings = adapter_settings("router_focused", {"rank": 4})
    expected = get_lora_preset("router_focused")
    expected.rank = 4
    assert settings == expected
    assert adapter_settings(None, {"rank": 8}).target_modules == DEFAULT_ADAPTER.target_modules
    with pytest.raises(ConfigError, match="surprise"):
        adapter_settings(None, {"surprise": 1})
    with pytest.raises(ConfigError) as error:
        adapter_settings(None, {"dropout": 1.5})
    assert error.value.field == "dropout"
