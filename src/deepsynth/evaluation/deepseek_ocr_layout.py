"""DeepSeek-OCR's own checkpoint layout for a merged v1 model: its tensor names, config.json, side files, shards."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from deepsynth.models.resolver import ARCHITECTURES_DIR, KNOWN_ARCHITECTURES

# In DeepSeek-OCR's checkpoint but not in transformers' native class: its CLIP reads SAM features,
# never pixels, so this patch embedding is unused (shared/reference; docs/serving.md).
DEEPSEEK_OCR_UNUSED_TENSOR = "model.vision_model.embeddings.patch_embedding.weight"
# Files of a DeepSeek-OCR repository that the merged model keeps (processor, tokenizer, own code).
_V1_SIDE_FILES = re.compile(r"^(processor_config\.json|special_tokens_map\.json|tokenizer(_config)?\.json|.*\.py)$")
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


def write_deepseek_ocr(merged, loaded, staging: Path, max_shard_size, report: Any,
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
