"""Export a trained adapter for serving: merged into its base, in the layout serving engines load.

* DeepSeek-OCR (v1) bases: DeepSeek-OCR's own checkpoint layout — its ``config.json``
  (``model_type: deepseek_vl_v2``, ``architectures: [DeepseekOCRForCausalLM]``), its tensor names
  (``model.sam_model…``, ``model.vision_model…``, one ``model.layers.N.mlp.experts.E.*_proj.weight``
  per expert), safetensors shards in its dtype (bf16) and ``model.safetensors.index.json`` — so engines with native
  DeepSeek-OCR support and the model's own inference code load it. The names come from
  transformers' own reverse weight conversion (the one ``save_pretrained`` applies).
* DeepSeek-OCR-2 and causal LM bases: the transformers-native layout (``save_pretrained``, in the
  base's dtype):
  DeepSeek-OCR-2 is served through its transformers class ``DeepseekOcr2ForConditionalGeneration``.

A base trained quantized (QLoRA) is dequantized first, so the merge adds the LoRA to the weights
the adapter was trained against. Adapters with LoRA on the router or on routed-expert tensors
(PEFT ``target_parameters``) must be merged to be served: serving engines' LoRA support covers
linear layers only (docs/serving.md). :func:`export_adapter` (no merge) warns about them.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepsynth.errors import ConfigError
from deepsynth.evaluation.adapter_folder import read_adapter_settings
from deepsynth.evaluation.deepseek_ocr_layout import write_deepseek_ocr
from deepsynth.models.adapters import attach_adapter
from deepsynth.models.resolver import ARCHITECTURES_DIR, KNOWN_ARCHITECTURES
from deepsynth.models.families import DEEPSEEK_OCR
from deepsynth.models.loading import load_model_and_processor

__all__ = [
    "ExportReport",
    "export_adapter",
    "export_merged",
    "merge_adapter",
    "parameter_targets",
    "unmerged_warning",
]

LOGGER = logging.getLogger(__name__)

_ADAPTER_FILES = re.compile(r"^(adapter_config\.json|adapter_model\.safetensors|README\.md|training_config\.json|"
                            r"tokenizer.*|special_tokens_map\.json|processor_config\.json|preprocessor_config\.json|"
                            r"chat_template\.\w+)$")


@dataclass
class ExportReport:
    """What an export wrote."""

    output_dir: str
    merged: bool
    layout: str  # "deepseek-ocr" (its own checkpoint), "transformers" or "peft-adapter"
    base_model: str | None
    family: str | None
    dtype: str | None = None
    tensors: int = 0
    shards: list[str] = field(default_factory=list)
    dequantized_base: str | None = None  # "4bit" / "8bit": merged through the dequantized QLoRA base
    parameter_targets: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------
# Parameter targets: why an adapter must be merged
# ------------------------------------------------------------------------------------------------


def parameter_targets(adapter_dir: str | Path) -> list[str]:
    """The adapter's LoRA on raw tensors (router weight, fused routed experts): PEFT ``target_parameters``."""
    path = Path(adapter_dir) / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"adapter: cannot read {path} ({error})") from None
    return list(config.get("target_parameters") or [])


def unmerged_warning(adapter_dir: str | Path) -> str | None:
    """The warning for serving this adapter unmerged, or None when it only adapts linear layers."""
    targets = parameter_targets(adapter_dir)
    if not targets:
        return None
    kinds = sorted({"router" if name.endswith(".gate.weight") else "routed experts" for name in targets})
    return (f"this adapter has LoRA on {' and '.join(kinds)} tensors ({len(targets)} PEFT target_parameters, e.g. "
            f"{targets[0]}); serving engines apply LoRA to linear layers only (vLLM's DeepSeek-OCR LoRA covers the "
            "language model's linear layers) and skip such tensors silently, so the served model would not be the "
            f"trained one. Serve the merged model instead: deepsynth export --adapter {adapter_dir} --merge DIR")


# ------------------------------------------------------------------------------------------------
# Merging
# ------------------------------------------------------------------------------------------------


def merge_adapter(adapter_dir: str | Path, *, model_name: str | None = None, dtype: torch.dtype = torch.float32):
    """(merged model in ``dtype`` on the CPU, LoadedModel, the run's RunSettings, quantization dequantized or None).

    A QLoRA run's base is loaded quantized exactly as it trained, then dequantized, then merged.
    ``export`` merges in the dtype it writes (the base's own, bf16 for DeepSeek-OCR): the whole model is then
    never held in fp32 (19 GB at DeepSeek-OCR's size, docs/performance.md), and each merged weight is
    peft's ``w + Δ`` rounded in that dtype, as a merge on a bf16 GPU would be.
    """
    from deepsynth.models.quantization.dequantize import dequantize_model

    training_config = read_adapter_settings(adapter_dir)
    base = model_name if model_name is not None else training_config.model_name
    quantization = training_config.lora_quantization
    loaded = load_model_and_processor(base, dtype=dtype, device="cpu", quantization=quantization)
    model = dequantize_model(loaded.model, dtype) if quantization else loaded.model
    merged = attach_adapter(model, adapter_dir).merge_and_unload()
    merged.eval()
    loaded.model = merged
    return merged, loaded, training_config, quantization


def export_merged(adapter_dir: str | Path, output_dir: str | Path, *, model_name: str | None = None,
                  max_shard_size: str | int = "5GB", dtype: str | None = None) -> ExportReport:
    """Merge the adapter into its base and write a standalone model (+ processor) to ``output_dir``.

    ``dtype``: of the written weights; default the base checkpoint's own (bf16 for DeepSeek-OCR and
    DeepSeek-OCR-2, fp32 for the embedded tiny model); the merge is done in that dtype.
    Written into a temporary sibling folder and renamed at the end: an interrupted export never
    leaves a half-written model behind. ``output_dir`` must not exist or be empty.
    """
    _check_shard_size(max_shard_size)  # before the output folder and the model: one clear error
    output_dir = _check_output_dir(output_dir)
    target = _DTYPES[dtype] if dtype else None
    if dtype and target is None:
        raise ValueError(f"export dtype: got {dtype!r}, expected one of {', '.join(n for n in _DTYPES if n)}")
    base = model_name if model_name is not None else read_adapter_settings(adapter_dir).model_name
    target = target or base_dtype(base)
    merged, loaded, _, quantization = merge_adapter(adapter_dir, model_name=model_name, dtype=target)
    report = ExportReport(str(output_dir), True, "", loaded.name, loaded.family, str(target).removeprefix("torch."),
                          dequantized_base=quantization, parameter_targets=parameter_targets(adapter_dir))
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        if loaded.family == DEEPSEEK_OCR:
            write_deepseek_ocr(merged, loaded, staging, max_shard_size, report, target)
        else:
            report.layout = "transformers"
            merged.to(target).save_pretrained(str(staging), max_shard_size=max_shard_size)
            loaded.processor.save_pretrained(str(staging))
            report.shards = sorted(p.name for p in staging.glob("*.safetensors"))
            report.tensors = sum(1 for _ in merged.state_dict())
            if loaded.family != "causal_lm":
                report.notes.append("DeepSeek-OCR-2: transformers-native layout (DeepseekOcr2ForConditionalGeneration)")
        recorded = Path(adapter_dir) / "training_config.json"
        if recorded.is_file():  # the run's task, instruction and mode: `generate --model` reads them
            shutil.copy2(recorded, staging / recorded.name)
        _publish(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def export_adapter(adapter_dir: str | Path, output_dir: str | Path) -> ExportReport:
    """Copy the adapter (PEFT files, tokenizer/processor, card) for serving it unmerged on its base.

    The report carries :func:`unmerged_warning` when the adapter has router / routed-expert LoRA.
    """
    adapter_dir = Path(adapter_dir)
    training_config = read_adapter_settings(adapter_dir)
    output_dir = _check_output_dir(output_dir)
    warning = unmerged_warning(adapter_dir)
    report = ExportReport(str(output_dir), False, "peft-adapter", training_config.model_name, None,
                          parameter_targets=parameter_targets(adapter_dir), warnings=[warning] if warning else [])
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        for file in sorted(adapter_dir.iterdir()):
            if file.is_file() and _ADAPTER_FILES.match(file.name):
                shutil.copy2(file, staging / file.name)
        report.shards = ["adapter_model.safetensors"]
        _publish(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "float32": torch.float32, "fp32": torch.float32}


def base_dtype(name: str | None) -> torch.dtype:
    """The dtype the base checkpoint is stored in (its config.json), bf16 when it does not say."""
    from deepsynth.models import tiny
    from deepsynth.models.resolver import EMBEDDED_MODEL_NAME

    if name is None or name == EMBEDDED_MODEL_NAME:
        config_file = tiny.SHIPPED_DIR / "config.json" if tiny.shipped_checkpoint() else None
        if config_file is None:
            return torch.float32  # the seeded random init is built in fp32
    elif Path(name).expanduser().is_dir():
        config_file = Path(name).expanduser() / "config.json"
    elif name.lower() in KNOWN_ARCHITECTURES:
        config_file = ARCHITECTURES_DIR / KNOWN_ARCHITECTURES[name.lower()]
    else:
        return torch.bfloat16
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return torch.bfloat16
    return _DTYPES.get(str(data.get("dtype") or data.get("torch_dtype") or "bfloat16"), torch.bfloat16)


def _check_shard_size(max_shard_size: str | int) -> int:
    """``max_shard_size`` in bytes ("5GB", "500MB" or a number of bytes > 0), else a ConfigError naming it."""
    from huggingface_hub.serialization._base import parse_size_to_int

    try:
        size = parse_size_to_int(max_shard_size) if isinstance(max_shard_size, str) else int(max_shard_size)
    except (TypeError, ValueError):
        size = 0
    if size <= 0:
        raise ConfigError("max_shard_size", max_shard_size, "a size such as 5GB or 500MB, or a number of bytes > 0")
    return size


def _check_output_dir(output_dir: str | Path) -> Path:
    output_dir = Path(output_dir).expanduser().resolve()
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ValueError(f"export: {output_dir} already exists and is not an empty folder; choose a new folder")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    return output_dir


def _publish(staging: Path, output_dir: Path) -> None:
    if output_dir.exists():
        output_dir.rmdir()  # empty (checked before)
    staging.rename(output_dir)
