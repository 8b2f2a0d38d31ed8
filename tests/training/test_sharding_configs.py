"""The shipped accelerate configs for sharded training, validated by accelerate and transformers
(no DeepSpeed needed), and what DeepSynth refuses at once under a sharding launcher."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from deepsynth.cli import main
from deepsynth.training.config import TrainerConfig
from deepsynth.training.distributed import weights_sharded
from deepsynth.training.production_trainer import UnifiedProductionTrainer

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "accelerate"


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_load_in_accelerate(stage, monkeypatch):
    from accelerate.utils.deepspeed import HfDeepSpeedConfig

    cluster = load_config_from_file(str(EXAMPLES / f"deepspeed_zero{stage}.yaml"))
    assert cluster.distributed_type == DistributedType.DEEPSPEED
    json_file = REPO / cluster.deepspeed_config["deepspeed_config_file"]  # relative to the repository root
    assert json_file.is_file()
    assert cluster.deepspeed_config["zero3_init_flag"] is (stage == 3)
    parsed = HfDeepSpeedConfig(str(json_file))  # accelerate's own parser (no DeepSpeed needed)
    assert parsed.get_value("zero_optimization.stage") == stage and parsed.is_zero3() is (stage == 3)

    # DeepSynth treats ZeRO-3 (not ZeRO-2) as sharded weights: evaluation and saves on every rank.
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(json_file))
    assert weights_sharded() is (stage == 3)


@pytest.mark.parametrize("stage", [2, 3])
def test_every_auto_value_of_the_deepspeed_configs_resolves_from_deepsynths_arguments(stage, tmp_path):
    pytest.importorskip("deepspeed", reason="transformers resolves DeepSpeed configs only with DeepSpeed installed")
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from deepsynth.models.loading import load_model_and_processor

    config = TrainerConfig(preset="tiny_data", output_dir=str(tmp_path / "out"), batch_size=2,
                           gradient_accumulation_steps=4)
    args = UnifiedProductionTrainer(config)._training_arguments(tmp_path / "out", total=8)
    ds_config = HfTrainerDeepSpeedConfig(str(EXAMPLES / f"deepspeed_zero{stage}.json"))
    ds_config.trainer_config_process(args)  # as the Trainer does when launched with this file
    ds_config.trainer_config_finalize(args, load_model_and_processor(config.model_name).model, num_training_steps=8)
    resolved = ds_config.config
    assert "auto" not in json.dumps(resolved), json.dumps(resolved, indent=1)
    assert resolved["train_micro_batch_size_per_gpu"] == 2 and resolved["gradient_accumulation_steps"] == 4


def test_fsdp_config_is_fsdp2_with_full_state_dict_saves_and_rank0_loading():
    cluster = load_config_from_file(str(EXAMPLES / "fsdp.yaml"))
    assert cluster.distributed_type == DistributedType.FSDP
    fsdp = cluster.fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # the adapter is gathered; rank 0 writes
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True  # rank 0 reads the weights, the others start on meta
    assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp  # the model's own _no_split_modules


def _launched_with(monkeypatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="QLoRA needs bitsandbytes")
def test_qlora_under_fsdp_is_refused_at_once_with_the_reason(monkeypatch, tmp_path, capsys):
    _launched_with(monkeypatch, ACCELERATE_USE_FSDP="true", FSDP_VERSION="2")
    out = str(tmp_path / "out")
    assert main(["train", "--preset", "qlora_4bit", "--output-dir", out, "--max-train-samples", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "lora_quantization" in err and "ddp.yaml" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_fsdp_version_1_is_refused(monkeypatch, tmp_path, capsys):
    _launched_with(monkeypatch, ACCELERATE_USE_FSDP="true", FSDP_VERSION="1")
    assert main(["train", "--preset", "tiny_data", "--output-dir", str(tmp_path / "out"), "--max-train-samples", "2"]
                ) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "fsdp_version" in err


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="DeepSpeed is installed here")
def test_a_deepspeed_launch_without_deepspeed_is_one_clear_error(monkeypatch, tmp_path, capsys):
    _launched_with(monkeypatch, ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE="3")
    assert main(["train", "--preset", "tiny_data", "--output-dir", str(tmp_path / "out"), "--max-train-samples", "2"]
                ) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "pip install deepspeed" in err
