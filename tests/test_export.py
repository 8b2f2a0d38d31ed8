"""`deepsynth export`: merged models in the layout serving engines load (DeepSeek-OCR: its own checkpoint)."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from deepsynth.cli import main
from deepsynth.data import load_sample_dataset
from deepsynth.data.collate import DataCollator, build_example
from deepsynth.evaluation.adapter_folder import load_adapted_model
from deepsynth.models.resolver import resolve_config, unlimited_ocr_config_from_deepseek_vl_v2
from deepsynth.evaluation.deepseek_ocr_layout import DEEPSEEK_OCR_UNUSED_TENSOR, deepseek_ocr_state_dict, deepseek_vl_v2_config
from deepsynth.models.loading import load_model_and_processor
from deepsynth.training.config import TrainerConfig
from deepsynth.training.lora_config import get_lora_preset
from deepsynth.training.targets import apply_lora, resolve_targets

sys.path.insert(0, str(Path(__file__).parent / "models"))
from tiny_deepseek_ocr import V1_CONFIG, write_deepseek_ocr_checkpoint  # noqa: E402

# DeepSeek-OCR's 2,710 checkpoint names and total size (its model.safetensors.index.json) and shape
# rules derived from its config.json; see the file's notes.
REFERENCE = json.loads((Path(__file__).parent / "models" / "data" / "deepseek_ocr_reference_keys.json").read_text())


def _reference_shape(name: str) -> list[int]:
    for pattern, shape in REFERENCE["shape_rules"]:
        if re.match(pattern, name):
            return shape
    raise AssertionError(f"no shape rule for {name}")


def _make_adapter(base: str | None, out: Path, preset: str, routed_experts: bool = False) -> Path:
    """A LoRA adapter folder as `deepsynth train` writes it (adapter + training_config.json), random B."""
    loaded = load_model_and_processor(base)
    lora = get_lora_preset(preset)
    lora.include_routed_experts, lora.dropout = routed_experts, 0.0
    model = apply_lora(loaded.model, resolve_targets(loaded.model, lora, loaded.family))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    model.save_pretrained(str(out))
    TrainerConfig.from_dict({"model_name": base, "preset": preset, "lora_include_routed_experts": routed_experts,
                             "lora_dropout": 0.0}).save(out / "training_config.json")
    return out


def _page_batch(processor):
    row = load_sample_dataset("eval", max_samples=1)[0]
    return DataCollator(processor)([build_example(processor, row["image"], row["summary"], max_length=512)])


@pytest.fixture(scope="module")
def v1_base(tmp_path_factory):
    directory = tmp_path_factory.mktemp("deepseek-ocr-tiny")
    write_deepseek_ocr_checkpoint(directory)
    return directory


@pytest.fixture(scope="module")
def v1_moe_adapter(v1_base, tmp_path_factory):
    """Attention + MLP + router LoRA and routed-expert LoRA: parameter targets that must be merged."""
    return _make_adapter(str(v1_base), tmp_path_factory.mktemp("adapter") / "moe", "high_capacity_moe",
                         routed_experts=True)


def test_deepseek_ocr_layout_at_real_dimensions_is_the_original_checkpoints():
    resolved = resolve_config("deepseek-ai/DeepSeek-OCR")
    state = deepseek_ocr_state_dict(resolved.build_on_meta())  # 3.3B parameters, no memory
    assert sorted(state) == REFERENCE["keys"]
    for name, tensor in state.items():
        assert list(tensor.shape) == _reference_shape(name), name
    assert sum(math.prod(t.shape) for t in state.values()) * 2 == REFERENCE["total_size_bytes"]


def test_export_merge_writes_deepseek_ocrs_own_checkpoint(v1_base, v1_moe_adapter, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["export", "--adapter", str(v1_moe_adapter), "--merge", str(out), "--dtype", "bfloat16",
                 "--max-shard-size", "1MB", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "deepseek-ocr" and report["merged"] and len(report["shards"]) > 1

    config = json.loads((out / "config.json").read_text())
    assert config == {**V1_CONFIG, "torch_dtype": "bfloat16"}  # the original config, model_type deepseek_vl_v2
    index = json.loads((out / "model.safetensors.index.json").read_text())
    with safe_open(str(v1_base / "model.safetensors"), framework="pt") as handle:
        base = {name: handle.get_tensor(name) for name in handle.keys()}
    assert set(index["weight_map"]) == set(base)  # DeepSeek-OCR's own names, every one of them
    exported = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(out / shard), framework="pt") as handle:
            exported.update({name: handle.get_tensor(name) for name in handle.keys()})
    assert set(exported) == set(base)
    assert all(t.dtype == torch.bfloat16 and t.shape == base[n].shape for n, t in exported.items())
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in exported.values())
    assert torch.equal(exported[DEEPSEEK_OCR_UNUSED_TENSOR], base[DEEPSEEK_OCR_UNUSED_TENSOR].to(torch.bfloat16))
    # The LoRA is merged: routed experts (per expert), router and attention changed; the vision side did not.
    for name in ("model.layers.1.mlp.experts.3.down_proj.weight", "model.layers.1.mlp.experts.0.gate_proj.weight",
                 "model.layers.1.mlp.gate.weight", "model.layers.0.self_attn.q_proj.weight"):
        assert not torch.equal(exported[name], base[name].to(torch.bfloat16)), name
    assert torch.equal(exported["model.sam_model.patch_embed.proj.weight"],
                       base["model.sam_model.patch_embed.proj.weight"].to(torch.bfloat16))

    # The same export in fp32 loads back (DeepSynth's loader: transformers' native class, reading
    # DeepSeek-OCR's names) and computes exactly the adapted model.
    exact = tmp_path / "merged-fp32"
    assert main(["export", "--adapter", str(v1_moe_adapter), "--merge", str(exact), "--dtype", "float32"]) == 0
    reloaded = load_model_and_processor(str(exact), dtype="float32")
    adapted = load_adapted_model(v1_moe_adapter)
    batch = _page_batch(adapted.loaded.processor)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(**batch).logits, adapted.model(**batch).logits, rtol=1e-4, atol=1e-4)


def test_export_without_merge_warns_about_parameter_targets(v1_base, v1_moe_adapter, tmp_path, capsys):
    assert main(["export", "--adapter", str(v1_moe_adapter), "--out", str(tmp_path / "moe")]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "routed experts" in err and "--merge" in err
    assert (tmp_path / "moe" / "adapter_model.safetensors").is_file()

    attention_only = _make_adapter(str(v1_base), tmp_path / "attention", "standard")
    capsys.readouterr()
    assert main(["export", "--adapter", str(attention_only), "--out", str(tmp_path / "plain")]) == 0
    assert "warning:" not in capsys.readouterr().err


def test_export_refuses_a_folder_that_is_not_empty(v1_moe_adapter, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", "--adapter", str(v1_moe_adapter), "--merge", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["taken"] and [p.name for p in out.iterdir()] == ["keep.txt"]


def test_deepseek_vl_v2_config_inverts_the_translation(v1_base):
    native = resolve_config(str(v1_base)).config
    again = unlimited_ocr_config_from_deepseek_vl_v2(deepseek_vl_v2_config(native))
    from transformers import UnlimitedOcrForConditionalGeneration

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in UnlimitedOcrForConditionalGeneration(native).state_dict().items()}
        again_shapes = {k: v.shape for k, v in UnlimitedOcrForConditionalGeneration(again).state_dict().items()}
    assert shapes == again_shapes


def test_export_of_deepseek_ocr2_is_transformers_native(tmp_path, capsys):
    adapter = _make_adapter(None, tmp_path / "adapter", "tiny_data")
    out = tmp_path / "merged"
    assert main(["export", "--adapter", str(adapter), "--merge", str(out)]) == 0
    assert "transformers layout" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "deepseek_ocr2" and config["architectures"] == ["DeepseekOcr2ForConditionalGeneration"]
    assert (out / "processor_config.json").is_file()
