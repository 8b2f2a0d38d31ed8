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
from safetensors import safe_open
from safetensors.torch import save_file

from deepsynth.errors import ConfigError
from deepsynth.evaluation.adapter_folder import read_adapter_settings
from deepsynth.models.adapters import attach_adapter
from deepsynth.models.resolver import ARCHITECTURES_DIR, KNOWN_ARCHITECTURES
from deepsynth.models.families import DEEPSEEK_OCR
from deepsynth.models.loading import load_model_and_processor

__all__ = [
    "DEEPSEEK_OCR_UNUSED_TENSOR",
    "ExportReport",
    "deepseek_ocr_state_dict",
    "deepseek_vl_v2_config",
    "export_adapter",
    "export_merged",
    "iter_deepseek_ocr_tensors",
    "merge_adapter",
    "parameter_targets",
    "unmerged_warning",
]

LOGGER = logging.getLogger(__name__)

# In DeepSeek-OCR's checkpoint but not in transformers' native class: its CLIP reads SAM features,
# never pixels, so this patch embedding is unused (shared/reference; docs/serving.md).
DEEPSEEK_OCR_UNUSED_TENSOR = "model.vision_model.embeddings.patch_embedding.weight"
# Files of a DeepSeek-OCR repository that the merged model keeps (processor, tokenizer, own code).
_V1_SIDE_FILES = re.compile(r"^(processor_config\.json|special_tokens_map\.json|tokenizer(_config)?\.json|.*\.py)$")
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
            _write_deepseek_ocr(merged, loaded, staging, max_shard_size, report, target)
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


# ------------------------------------------------------------------------------------------------
# DeepSeek-OCR's own layout
# ------------------------------------------------------------------------------------------------


_LAYER_GROUP = re.compile(r"^(.*?\blayers\.\d+\.)")


def iter_deepseek_ocr_tensors(model: torch.nn.Module, unused_tensor: torch.Tensor | None = None):
    """``model``'s (UnlimitedOcr) weights under DeepSeek-OCR's checkpoint names, one group at a time.

    transformers' reverse weight conversion (what ``save_pretrained`` applies) is run per decoder /
    vision layer, so only one layer's unfused experts exist at a time (at real dimensions the whole
    model reverted at once is ~10 GB more in fp32). The first group also holds the unused tensor:
    ``unused_tensor`` (the original checkpoint's value of :data:`DEEPSEEK_OCR_UNUSED_TENSOR`) or
    zeros (DeepSeek-OCR never reads it). Works on the meta device (shapes only).
    """
    from transformers.core_model_loading import revert_weight_conversion

    native = model.state_dict()
    groups: dict[str, list[str]] = {}
    for name in native:
        match = _LAYER_GROUP.match(name)
        groups.setdefault(match.group(1) if match else "", []).append(name)
    clip = model.config.vision_config.encoder_config
    shape = (clip.hidden_size, getattr(clip, "num_channels", 3), clip.patch_size, clip.patch_size)
    for index, names in enumerate(groups.values()):
        part = dict(revert_weight_conversion(model, {name: native[name] for name in names}))
        if index == 0:
            reference = next(iter(part.values()))
            if unused_tensor is None or tuple(unused_tensor.shape) != shape:
                unused_tensor = torch.zeros(shape, dtype=reference.dtype, device=reference.device)
            part[DEEPSEEK_OCR_UNUSED_TENSOR] = unused_tensor
        yield part


def deepseek_ocr_state_dict(model: torch.nn.Module, unused_tensor: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """All of :func:`iter_deepseek_ocr_tensors` in one dict (for shapes on the meta device, small models)."""
    state: dict[str, torch.Tensor] = {}
    for part in iter_deepseek_ocr_tensors(model, unused_tensor):
        state.update(part)
    return state


def deepseek_vl_v2_config(config) -> dict[str, Any]:
    """A DeepSeek-OCR ``config.json`` (``deepseek_vl_v2``) for a native ``UnlimitedOcrConfig``.

    Starts from DeepSeek-OCR's own config (shipped) and sets every dimension from ``config``: the
    inverse of :func:`deepsynth.models.resolver.unlimited_ocr_config_from_deepseek_vl_v2`.
    """
    data = json.loads((ARCHITECTURES_DIR / "deepseek-ocr.json").read_text(encoding="utf-8"))
    text, vision = config.text_config, config.vision_config
    language = data["language_config"]
    for key in ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "n_routed_experts", "n_shared_experts",
                "num_experts_per_tok", "n_group", "topk_group", "topk_method", "bos_token_id", "eos_token_id",
                "max_position_embeddings"):
        if getattr(text, key, None) is not None:
            language[key] = data[key] = getattr(text, key)
    dense = 0
    for kind in text.mlp_layer_types:
        if kind != "dense":
            break
        dense += 1
    language["first_k_dense_replace"] = data["first_k_dense_replace"] = dense
    sam, clip = vision.sam_config, vision.encoder_config
    widths = data["vision_config"]["width"]
    widths["sam_vit_b"].update(width=sam.hidden_size, layers=sam.num_hidden_layers, heads=sam.num_attention_heads,
                               global_attn_indexes=list(sam.global_attn_indexes),
                               downsample_channels=list(sam.downsample_channels))
    widths["clip-l-14-224"].update(width=clip.hidden_size, layers=clip.num_hidden_layers,
                                   heads=clip.num_attention_heads, patch_size=clip.patch_size,
                                   image_size=clip.image_size)
    data["projector_config"].update(input_dim=sam.downsample_channels[-1] + clip.hidden_size, n_embed=text.hidden_size)
    data["_name_or_path"] = None
    return data


def _base_files_dir(name: str | None) -> Path | None:
    """The folder holding the base checkpoint's files: a local directory, or its Hugging Face cache snapshot."""
    if name is None:
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not cached (offline, never downloaded): the caller says what to add
        return None


def _original_config(base_dir: Path | None, name: str | None, model) -> dict[str, Any]:
    if base_dir is not None and (base_dir / "config.json").is_file():
        data = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
        if data.get("model_type") == "deepseek_vl_v2":
            return data
    known = KNOWN_ARCHITECTURES.get((name or "").lower())
    if known == "deepseek-ocr.json":
        return json.loads((ARCHITECTURES_DIR / known).read_text(encoding="utf-8"))
    return deepseek_vl_v2_config(model.config)


def _read_unused_tensor(base_dir: Path | None) -> torch.Tensor | None:
    if base_dir is None:
        return None
    for file in sorted(base_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            if DEEPSEEK_OCR_UNUSED_TENSOR in handle.keys():
                return handle.get_tensor(DEEPSEEK_OCR_UNUSED_TENSOR)
    return None


def _write_deepseek_ocr(merged, loaded, staging: Path, max_shard_size, report: ExportReport,
                       dtype: torch.dtype = torch.bfloat16) -> None:
    base_dir = _base_files_dir(loaded.name)
    unused = _read_unused_tensor(base_dir)
    if unused is None:
        report.notes.append(f"{DEEPSEEK_OCR_UNUSED_TENSOR} written as zeros (not in the base files here; "
                            "DeepSeek-OCR never reads it)")
    index = write_safetensors_shards(iter_deepseek_ocr_tensors(merged, unused), staging, max_shard_size, dtype=dtype)
    config = _original_config(base_dir, loaded.name, merged)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (staging / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    copied = _copy_side_files(base_dir, staging)
    loaded.processor.tokenizer.save_pretrained(str(staging))
    if not (staging / "processor_config.json").is_file():
        _write_v1_processor_config(loaded.processor, staging)
    if not any(name.endswith(".py") for name in copied):
        report.notes.append("DeepSeek-OCR's own model code (*.py, trust_remote_code) was not in the base files here: "
                            "copy it from the deepseek-ai/DeepSeek-OCR repository to run its own inference code")
    report.layout, report.tensors = "deepseek-ocr", len(index["weight_map"])
    report.shards = sorted(set(index["weight_map"].values()))


def _copy_side_files(base_dir: Path | None, staging: Path) -> list[str]:
    copied = []
    if base_dir is not None:
        for file in sorted(base_dir.iterdir()):
            if file.is_file() and _V1_SIDE_FILES.match(file.name):
                shutil.copy2(file, staging / file.name)
                copied.append(file.name)
    return copied


def _write_v1_processor_config(processor, staging: Path) -> None:
    """DeepSeek-OCR's ``processor_config.json`` (its DeepseekVLV2Processor fields) from our processor's settings."""
    image = processor.image_processor
    size = max(image.size["height"], image.size["width"]) if isinstance(image.size, dict) else max(image.size.height, image.size.width)
    settings = {
        "add_special_token": False, "candidate_resolutions": [[size, size]],
        "downsample_ratio": processor.downsample_ratio, "ignore_id": -100,
        "image_mean": list(image.image_mean), "image_std": list(image.image_std), "image_token": "<image>",
        "mask_prompt": False, "normalize": True, "pad_token": processor.tokenizer.pad_token,
        "patch_size": processor.patch_size, "processor_class": "DeepseekVLV2Processor", "sft_format": "deepseek",
    }
    (staging / "processor_config.json").write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n",
                                                    encoding="utf-8")


def write_safetensors_shards(parts, folder: Path, max_shard_size: str | int = "5GB",
                             dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """Write groups of tensors (an iterable of dicts) as ``dtype`` safetensors shards + ``model.safetensors.index.json``.

    Consecutive groups fill a shard up to ``max_shard_size``; tensors are cast as they come, so at
    most one shard and one group are held besides the model. The index is always written, and the
    shards are numbered like DeepSeek-OCR's (``model-00001-of-00003.safetensors``).
    """
    from huggingface_hub.serialization._base import parse_size_to_int  # "5GB" → bytes, as the hub splits

    limit = parse_size_to_int(max_shard_size) if isinstance(max_shard_size, str) else int(max_shard_size)
    written: list[tuple[Path, list[str]]] = []
    buffer: dict[str, torch.Tensor] = {}
    size = total = 0

    def flush() -> None:
        nonlocal buffer, size
        if buffer:
            path = folder / f".shard-{len(written) + 1:05d}.safetensors"
            save_file(buffer, str(path), metadata={"format": "pt"})
            written.append((path, list(buffer)))
        buffer, size = {}, 0

    for part in parts:
        for name, tensor in part.items():
            tensor = tensor.detach().to("cpu", dtype).contiguous()
            if buffer and size + tensor.nbytes > limit:
                flush()
            buffer[name] = tensor
            size += tensor.nbytes
            total += tensor.nbytes
        del part
    flush()
    weight_map = {}
    for number, (path, names) in enumerate(written, start=1):
        final = f"model-{number:05d}-of-{len(written):05d}.safetensors"
        path.rename(folder / final)
        weight_map.update(dict.fromkeys(names, final))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index
