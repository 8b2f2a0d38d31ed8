"""label, eval and generate take the adapter's task and instruction; eval scores the rows held out from training."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pdf_support import png_bytes  # noqa: E402

from deepsynth.cli import main  # noqa: E402
from deepsynth.evaluation.adapter_folder import evaluate_adapter, generate_from_adapter  # noqa: E402
from deepsynth.labeling import draft_labels  # noqa: E402
from deepsynth.models.loading import load_model_and_processor  # noqa: E402


@pytest.fixture(scope="module")
def lora_weights(tmp_path_factory) -> Path:
    """A PEFT adapter on the embedded base (LoRA B not zero), without training_config.json."""
    folder = tmp_path_factory.mktemp("lora") / "adapter"
    torch.manual_seed(0)
    model = load_model_and_processor(None).model
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)", init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(folder)
    return folder


def _adapter(lora_weights: Path, tmp_path: Path, **settings) -> Path:
    """The adapter with the training_config.json a run with ``settings`` writes."""
    folder = tmp_path / "adapter"
    shutil.copytree(lora_weights, folder)
    (folder / "training_config.json").write_text(json.dumps(settings), encoding="utf-8")
    return folder


def test_label_prompts_a_transcription_adapter_as_generate_does(lora_weights, tmp_path):
    # What `deepsynth train --task transcribe` writes: no instruction of its own, the task's prompt.
    folder = _adapter(lora_weights, tmp_path, task="transcribe", instruction=None, max_new_tokens=6)
    page = tmp_path / "scan.png"
    page.write_bytes(png_bytes((300, 400)))
    out = tmp_path / "drafts.jsonl"
    draft_labels(page, out, adapter=folder, progress=False)
    (line,) = [json.loads(text) for text in out.read_text(encoding="utf-8").splitlines()]
    generated = generate_from_adapter(folder, image=page)
    assert line["summary"] == str(generated) and line["summary"]
