import json

import pytest
import yaml

from deepsynth.training.config import OptimizerConfig, TrainerConfig, build_config, config_fields
from deepsynth.training.errors import ConfigError

SEED_TEST_1 = dict(
    model_name="deepseek-ai/DeepSeek-OCR",
    output_dir="/tmp/test_tiny_preset",
    batch_size=1,
    num_epochs=300,
    max_train_samples=3,
    gradient_accumulation_steps=16,
    use_lora=True,
    lora_rank=16,
    lora_alpha=32,
    lora_dropout=0.1,
    lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"],
)


def test_seed_test_1_keywords_construct_the_config():
    config = TrainerConfig(**SEED_TEST_1)
    for key, value in SEED_TEST_1.items():
        assert getattr(config, key) == value


def test_every_seed_field_exists():
    names = set(TrainerConfig.__dataclass_fields__)
    for field in ("model_name", "output_dir", "batch_size", "num_epochs", "gradient_accumulation_steps",
                  "max_train_samples", "max_eval_samples", "use_lora", "lora_rank", "lora_alpha", "lora_dropout",
                  "lora_target_modules", "lora_modules_to_save", "gate_dropout_rate", "gate_dropout_keywords",
                  "expert_dropout_rate", "expert_dropout_min_keep", "push_to_hub", "hub_model_id", "hub_private",
                  "hub_token"):
        assert field in names
    assert set(OptimizerConfig.__dataclass_fields__) >= {
        "learning_rate", "weight_decay", "warmup_steps", "warmup_ratio", "scheduler_type"}
    assert OptimizerConfig().weight_decay == 0.01


def _full_config() -> TrainerConfig:
    return TrainerConfig(
        **SEED_TEST_1, max_eval_samples=1, lora_modules_to_save=["gate"], gate_dropout_rate=0.1,
        gate_dropout_keywords=("gate", "router"), expert_dropout_rate=0.05, expert_dropout_min_keep=2,
        push_to_hub=True, hub_model_id="org/name", hub_private=True, hub_token="hf_secret_value",
        optimizer=OptimizerConfig(learning_rate=3e-5, warmup_steps=7, scheduler_type="linear"),
        preset="tiny_data",
    )


def test_round_trip_through_dict_json_and_yaml():
    config = _full_config()
    token = config.hub_token
    assert TrainerConfig(**config.to_dict(), hub_token=token) == config  # upstream's form raised
    assert TrainerConfig.from_dict(json.loads(config.to_json()), hub_token=token) == config
    assert TrainerConfig.from_dict(yaml.safe_load(config.to_yaml()), hub_token=token) == config


def test_round_trip_through_files(tmp_path):
    config = _full_config()
    for name in ("c.json", "c.yaml"):
        path = config.save(tmp_path / name)
        loaded = TrainerConfig.from_file(path)
        assert loaded.to_dict() == config.to_dict()
        assert loaded.hub_token is None


def test_token_never_serialised(tmp_path):
    config = _full_config()
    assert "hf_secret_value" not in config.to_json()
    assert "hf_secret_value" not in config.to_yaml()
    assert "hf_secret_value" not in repr(config)
    assert "hf_secret_value" not in config.save(tmp_path / "c.json").read_text()


def test_flat_optimizer_fields_are_accepted():
    config = TrainerConfig.from_dict({"learning_rate": 1e-4, "warmup_ratio": 0.2, "scheduler_type": "constant"})
    assert config.optimizer == OptimizerConfig(learning_rate=1e-4, warmup_ratio=0.2, scheduler_type="constant")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"lora_rank": 0}, "lora_rank"),
        ({"lora_rank": -4}, "lora_rank"),
        ({"lora_alpha": 0}, "lora_alpha"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"lora_dropout": -0.1}, "lora_dropout"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_epochs": 1.5}, "num_epochs"),
        ({"preset": "huge"}, "preset"),
        ({"gate_dropout_rate": 1.2}, "gate_dropout_rate"),
        ({"expert_dropout_min_keep": 0}, "expert_dropout_min_keep"),
        ({"push_to_hub": True}, "hub_model_id"),
        ({"lora_bias": "some"}, "lora_bias"),
    ],
)
def test_invalid_values_name_the_field_and_range(kwargs, field):
    with pytest.raises(ConfigError) as error:
        TrainerConfig(**kwargs)
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}: got")
    assert "expected" in str(error.value)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": -1e-5}, "learning_rate"),
        ({"scheduler_type": "exponential"}, "scheduler_type"),
        ({"warmup_steps": 10, "warmup_ratio": 0.1}, "warmup_steps"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
    ],
)
def test_invalid_optimizer_values(kwargs, field):
    with pytest.raises(ConfigError) as error:
        OptimizerConfig(**kwargs)
    assert error.value.field == field
    assert "expected" in str(error.value)


def test_unknown_fields_are_refused():
    with pytest.raises(ConfigError, match="lora_rnak"):
        TrainerConfig.from_dict({"lora_rnak": 8})


def test_seed_test_2_keywords_and_the_flat_defaults():
    # Test 2 sets the flat LoRA fields; without them, TrainerConfig's defaults are exactly today's.
    config = TrainerConfig(batch_size=1, num_epochs=200, max_train_samples=20, gradient_accumulation_steps=16,
                           lora_rank=32, lora_alpha=64, lora_dropout=0.08,
                           lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"])
    assert config.lora_config().target_modules[-3:] == ["gate_proj", "up_proj", "down_proj"]
    default = TrainerConfig()
    assert (default.use_lora, default.lora_rank, default.lora_alpha, default.lora_dropout) == (True, 32, 64, 0.08)
    assert default.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
    assert (default.lora_modules_to_save, default.lora_bias, default.lora_quantization) == (None, "none", None)
    assert default.lora_include_routed_experts is False


def test_a_preset_sets_its_lora_fields_and_keeps_the_others():
    config = build_config(TrainerConfig(batch_size=2).to_dict(), "balanced")
    assert (config.preset, config.lora_rank, config.lora_alpha, config.lora_dropout) == ("balanced", 32, 64, 0.08)
    assert config.batch_size == 2
    assert config.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("total", [1, 2, 3, 10, 56, 300, 1000])
@pytest.mark.parametrize("optimizer", [
    OptimizerConfig(), OptimizerConfig(warmup_steps=50), OptimizerConfig(warmup_steps=10_000),
    OptimizerConfig(warmup_ratio=0.5), OptimizerConfig(scheduler_type="none", warmup_steps=5)])
def test_warmup_is_always_shorter_than_the_run(total, optimizer):
    warmup = optimizer.resolve_warmup(total)
    assert 0 <= warmup < total


def test_warmup_rules():
    assert OptimizerConfig().resolve_warmup(300) == 30  # default 10%
    assert OptimizerConfig(warmup_steps=50).resolve_warmup(300) == 50
    assert OptimizerConfig(warmup_steps=50).resolve_warmup(56) == 50
    assert OptimizerConfig(warmup_steps=50).resolve_warmup(20) == 19
    assert OptimizerConfig(scheduler_type="none", warmup_steps=5).resolve_warmup(100) == 0


@pytest.mark.parametrize("data, field", [
    ({"lora_target_modules": "q_proj"}, "lora_target_modules"),  # would become single letters
    ({"use_lora": "false"}, "use_lora"),  # a non-empty string is truthy
    ({"optimizer": 3}, "optimizer"),
    ({"model_name": 5}, "model_name"),
    ({"batch_size": None}, "batch_size"),
])
def test_values_of_the_wrong_kind_name_the_field(data, field):
    with pytest.raises(ConfigError) as error:
        TrainerConfig.from_dict(data)
    assert error.value.field == field


def test_build_config_applies_file_then_preset_then_overrides(tmp_path):
    path = TrainerConfig(num_epochs=7, lora_rank=8, optimizer=OptimizerConfig(warmup_ratio=0.2)).save(tmp_path / "c.yaml")
    config = build_config(path, "balanced", {"lora_dropout": 0.2, "learning_rate": 1e-3, "warmup_steps": 4})
    assert config.num_epochs == 7  # from the file
    assert (config.preset, config.lora_rank, config.lora_alpha) == ("balanced", 32, 64)  # the preset's, over the file's
    assert config.lora_dropout == 0.2 and config.optimizer.learning_rate == 1e-3  # the overrides, over both
    # warmup_steps replaces the file's warmup_ratio rather than clashing with it.
    assert (config.optimizer.warmup_steps, config.optimizer.warmup_ratio) == (4, None)
    assert build_config(None, None, {"warmup_ratio": 0.3, "warmup_steps": None}).optimizer.warmup_ratio == 0.3
    assert build_config({"num_epochs": 3}) == TrainerConfig(num_epochs=3)
    with pytest.raises(ConfigError) as error:
        build_config(None, None, {"num_epochs": 0})
    assert error.value.field == "num_epochs"
    with pytest.raises(ConfigError, match="lora_rnak"):
        build_config(None, None, {"lora_rnak": 8})


def test_every_field_has_a_one_line_help_and_a_kind():
    infos = config_fields()
    names = [info.name for info in infos]
    assert len(names) == len(set(names))  # optimizer fields flat, no clash with TrainerConfig's
    assert set(names) == (set(TrainerConfig.__dataclass_fields__) - {"optimizer"}) | set(OptimizerConfig.__dataclass_fields__)
    for info in infos:
        assert info.help and "\n" not in info.help, info.name
        assert info.kind in {"bool", "int", "float", "number", "str", "list", "dict"}, info.name
    kinds = {info.name: info.kind for info in infos}
    assert (kinds["lora_target_modules"], kinds["column_mapping"], kinds["lora_alpha"]) == ("list", "dict", "number")
