"""Constants and helpers shared by the publishing tests (imported by the tests and the conftest)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from deepsynth.publishing.hub import list_publishable_files

TOKEN = "hf_DeepSynthFakeToken_7Qx93LmZpW"  # distinctive, so leak scans cannot match by accident
REPO_ID = "deepsynth/deepsynth-test"
BIG_ADAPTER_BYTES = 17 * 1024 * 1024  # the size upstream's uploader failed on
INTERMEDIATE_FILES = (
    "checkpoint-10/adapter_model.safetensors",
    "checkpoint-10/optimizer.pt",
    "epoch_1/adapter_model.safetensors",
    "runs/events.out.tfevents.1700000000.host",
    "scratch.tmp",
    "training_args.bin",
)


# --------------------------------------------------------------------------- helpers


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (README.md excluded: the one file a push may write)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "README.md"
    }


def published(folder: Path) -> set[str]:
    return set(list_publishable_files(folder)[0])


def assert_no_token(*, paths: tuple[Path, ...] = (), texts: tuple[str, ...] = ()) -> None:
    needle = TOKEN.encode()
    for root in paths:
        for file in [root] if root.is_file() else root.rglob("*"):
            if file.is_file():
                assert needle not in file.read_bytes(), f"token leaked into {file}"
    for text in texts:
        assert TOKEN not in text


# --------------------------------------------------------------------------- adapter folders


def metrics_for(family: str) -> dict:
    """A complete metrics.json of ``family`` as the trainer writes it."""
    base = {
        "deepseek_ocr2": ("deepseek-ai/DeepSeek-OCR-2", "DeepseekOcr2ForConditionalGeneration"),
        "deepseek_ocr": ("deepseek-ai/DeepSeek-OCR", "UnlimitedOcrForConditionalGeneration"),
        "causal_lm": ("HuggingFaceTB/SmolLM2-135M", "AutoModelForCausalLM"),
    }[family]
    return {
        "base_model": base[0],
        "model_family": family,
        "model_class": base[1],
        "preset": "attention_experts",
        "num_train_samples": 12,
        "num_eval_samples": 3,
        "optimizer_updates": 30,
        "trainable_params": {"total": 1_234_567, "by_group": {"attention": 1_000_000, "routed_experts": 234_567}},
        "resolved_targets": {
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
            "modules_to_save": [],
        },
        "eval": {
            "before": {"loss": 2.5, "rougeL": 0.41, "cer": 0.30},
            "after": {"loss": 1.25, "rougeL": 0.62, "cer": 0.12},
        },
    }


def training_config_for(family: str) -> dict:
    """training_config.json (the TrainerConfig as a dict, never the token)."""
    return {
        "model_name": metrics_for(family)["base_model"],
        "output_dir": "outputs/run",
        "batch_size": 1,
        "num_epochs": 3,
        "gradient_accumulation_steps": 4,
        "lora_rank": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "lora_target_modules": ["q_proj", "v_proj"],
        "lora_modules_to_save": None,
        "preset": "attention_experts",
        "hub_model_id": REPO_ID,
        "hub_private": False,
    }


def build_adapter(
    root: Path, name: str = "adapter", *, family: str = "deepseek_ocr2", adapter_bytes: int = 64 * 1024
) -> Path:
    """A trainer-like output folder ``root/name``; ``adapter_bytes`` sizes adapter_model.safetensors."""
    folder = root / name
    folder.mkdir()

    def write(rel: str, data: bytes) -> None:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)

    write("adapter_config.json", json.dumps({"peft_type": "LORA", "r": 16, "lora_alpha": 32}).encode())
    write("adapter_model.safetensors", _pseudo_random(name.encode(), adapter_bytes))
    write("tokenizer.json", json.dumps({"version": "1.0", "model": {"type": "BPE"}}).encode())
    write("tokenizer_config.json", json.dumps({"model_max_length": 8192}).encode())
    write("special_tokens_map.json", json.dumps({"eos_token": "</s>"}).encode())
    if family != "causal_lm":
        write("processor_config.json", json.dumps({"processor_class": "DeepseekOcr2Processor"}).encode())
    write("training_config.json", json.dumps(training_config_for(family), indent=2).encode())
    write("metrics.json", json.dumps(metrics_for(family), indent=2).encode())
    write("loss_curve.png", b"\x89PNG\r\n\x1a\n" + _pseudo_random(b"png", 4096))
    for rel in INTERMEDIATE_FILES:
        write(rel, _pseudo_random(rel.encode(), 2048))
    return folder


def _pseudo_random(seed: bytes, size: int) -> bytes:
    # Deterministic incompressible bytes: reproducible failures, distinct content per file.
    return random.Random(seed).randbytes(size)
