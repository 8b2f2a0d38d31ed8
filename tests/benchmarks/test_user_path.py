"""benchmarks/user_path.py: the replica has DeepSeek-OCR's own tensor names and shapes, and the user's
commands run from a replica folder (the smoke run, shrunken configs of both families)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
REFERENCE = ROOT / "tests" / "models" / "data" / "deepseek_ocr_reference_keys.json"
sys.path.insert(0, str(BENCH))

import user_path  # noqa: E402


def test_the_v1_replica_has_the_reference_checkpoints_names_shapes_and_size():
    from deepsynth.evaluation.deepseek_ocr_layout import DEEPSEEK_OCR_UNUSED_TENSOR
    from deepsynth.models.resolver import model_class_of

    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    config = user_path.family_config("deepseek-ocr", tiny=False)
    with torch.device("meta"):
        model = model_class_of("deepseek_ocr")(config)
    shapes = {name: tuple(t.shape) for group in user_path.checkpoint_tensors(model) for name, t in group.items()}
    clip = config.vision_config.encoder_config
    shapes[DEEPSEEK_OCR_UNUSED_TENSOR] = (clip.hidden_size, 3, clip.patch_size, clip.patch_size)
    assert sorted(shapes) == sorted(reference["keys"])
    rules = [(re.compile(pattern), tuple(shape)) for pattern, shape in reference["shape_rules"]]
    for name, shape in shapes.items():
        expected = next(rule_shape for pattern, rule_shape in rules if pattern.search(name))
        assert shape == expected, name
    total = sum(torch.Size(shape).numel() * 2 for shape in shapes.values())  # bf16
    assert total == reference["total_size_bytes"]


def test_replica_values_are_seeded_by_name():
    a = user_path.random_value("model.layers.3.self_attn.q_proj.weight", (4, 3))
    assert torch.equal(a, user_path.random_value("model.layers.3.self_attn.q_proj.weight", (4, 3)))
    assert not torch.equal(a, user_path.random_value("model.layers.4.self_attn.q_proj.weight", (4, 3)))
    assert torch.equal(user_path.random_value("model.norm.weight", (5,)), torch.ones(5))


def test_user_path_tiny_runs_the_users_commands_from_replica_folders(tmp_path):
    """``gpu_check.sh --user-path --tiny``: the GPU check's CPU dry run, on shrunken replicas."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DISABLE_TQDM": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    run = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--user-path", "--tiny", "--keep", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((tmp_path / "user_path_tiny.json").read_text(encoding="utf-8"))
    done = {(case["family"], case["preset"], case["command"]) for case in result["cases"] if case["completed"]}
    for family, (preset, commands) in user_path.SMOKE.items():
        assert {(family, preset, command) for command in commands} <= done
    train = next(c for c in result["cases"] if c["command"] == "train" and c["family"] == "deepseek-ocr")
    assert train["optimizer_updates"] == 2 and train["peak_rss_mib"] > 0 and train["cpu_seconds"] > 0
    assert train["vision_released_mib"] > 0 and train["quantized_fraction"] > 0
    # Each step's own peak is read from the run's log: the table can say which step sets the run's peak.
    assert {"setup_pages", "fit", "the final evaluation"} <= set(train["step_peak_rss_mib"])
    assert 0 < train["train_loop_peak_rss_mib"] <= train["peak_rss_mib"] + 1
    assert train["process_peak_over_loop_peak"] >= 1
    assert "| deepseek-ocr | qlora_4bit | train | yes |" in user_path.markdown_table(result)
    # The merged v1 QLoRA model generates from `deepsynth generate --model`.
    log = next(c["log"] for c in result["cases"] if c["command"] == "generate_model")
    assert "max_new_tokens" in Path(log).read_text(encoding="utf-8") or "EOS" in Path(log).read_text(encoding="utf-8")
