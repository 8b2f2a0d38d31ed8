"""What a model name means: its family, transformers config and class, resolved without loading weights.

Used by parameter accounting (on the meta device), recommendations and the model loader, so a name
means the same thing everywhere. The architectures shipped in ``architectures/`` make known Hub
names resolve offline.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    DeepseekOcr2Config,
    PretrainedConfig,
    UnlimitedOcrConfig,
)

from deepsynth.errors import ModelNotFoundError
from deepsynth.models.families import CAUSAL_LM, DEEPSEEK_OCR, DEEPSEEK_OCR2, family_names
from deepsynth.models.tiny import EMBEDDED_MODEL_NAME, embedded_config

ARCHITECTURES_DIR = Path(__file__).parent / "architectures"

# Hub names whose architecture ships with the package (lower-cased for lookup).
KNOWN_ARCHITECTURES: dict[str, str] = {
    "deepseek-ai/deepseek-ocr": "deepseek-ocr.json",
    "deepseek-ai/deepseek-ocr-2": "deepseek-ocr-2.json",
    "deepseek-community/deepseek-ocr-2": "deepseek-ocr-2.json",
    "huggingfacetb/smollm2-135m": "smollm2-135m.json",
    "huggingfacetb/smollm2-135m-instruct": "smollm2-135m.json",
}


@dataclass
class ResolvedConfig:
    """What a model name means: its family, its transformers config and the class that builds it."""

    name: str
    family: str
    config: PretrainedConfig
    model_class: type
    # Directory holding weights, when the name is a local checkpoint.
    local_dir: Path | None = None

    def build_on_meta(self) -> torch.nn.Module:
        """Instantiate the architecture on the meta device: exact shapes, no memory, no weights."""
        with torch.device("meta"):
            if self.model_class is AutoModelForCausalLM:
                return AutoModelForCausalLM.from_config(self.config)
            return self.model_class(self.config)


def unlimited_ocr_config_from_deepseek_vl_v2(config_dict: dict) -> UnlimitedOcrConfig:
    """Translate DeepSeek-OCR v1's ``deepseek_vl_v2`` config.json into transformers' native config.

    The native text model uses reference sliding-window attention (default window 128) whereas
    DeepSeek-OCR attends to the whole sequence, so the window is widened to the full context.
    """
    language = dict(config_dict.get("language_config") or config_dict)
    max_positions = int(language.get("max_position_embeddings", 8192))
    text_keys = (
        "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "n_routed_experts", "n_shared_experts",
        "num_experts_per_tok", "n_group", "topk_group", "topk_method", "bos_token_id", "eos_token_id",
        "rms_norm_eps", "routed_scaling_factor",
    )
    text_config = {key: language[key] for key in text_keys if language.get(key) is not None}
    first_dense = int(language.get("first_k_dense_replace", 1))
    layers = int(text_config.get("num_hidden_layers", 12))
    text_config["mlp_layer_types"] = ["dense" if i < first_dense else "sparse" for i in range(layers)]
    text_config["max_position_embeddings"] = max_positions
    text_config["sliding_window"] = max_positions

    vision = (config_dict.get("vision_config") or {}).get("width") or {}
    sam = vision.get("sam_vit_b") or {}
    clip = vision.get("clip-l-14-224") or {}
    sam_config = {
        key: sam[src]
        for key, src in (("hidden_size", "width"), ("num_hidden_layers", "layers"), ("num_attention_heads", "heads"),
                         ("global_attn_indexes", "global_attn_indexes"), ("downsample_channels", "downsample_channels"))
        if src in sam
    }
    encoder_config = {
        key: clip[src]
        for key, src in (("hidden_size", "width"), ("num_hidden_layers", "layers"), ("num_attention_heads", "heads"),
                         ("patch_size", "patch_size"), ("image_size", "image_size"))
        if src in clip
    }
    return UnlimitedOcrConfig(
        text_config=text_config,
        vision_config={"sam_config": sam_config, "encoder_config": encoder_config},
    )


def _config_from_dict(config_dict: dict, source: str) -> tuple[str, PretrainedConfig]:
    model_type = config_dict.get("model_type")
    if model_type == "deepseek_vl_v2":
        return DEEPSEEK_OCR, unlimited_ocr_config_from_deepseek_vl_v2(config_dict)
    if model_type == "unlimited_ocr":
        return DEEPSEEK_OCR, UnlimitedOcrConfig(**{k: v for k, v in config_dict.items() if k != "model_type"})
    if model_type == "deepseek_ocr2":
        return DEEPSEEK_OCR2, DeepseekOcr2Config(**{k: v for k, v in config_dict.items() if k != "model_type"})
    if not model_type:
        raise ValueError(f"model: {source} has no 'model_type' in its config.json")
    try:
        config = AutoConfig.for_model(**config_dict)
    except (ValueError, KeyError) as error:
        raise ValueError(f"model: {source} has model_type {model_type!r}, which transformers does not know") from error
    if type(config) not in AutoModelForCausalLM._model_mapping:
        raise ValueError(
            f"model: {source} is a {model_type!r} model, which is neither a DeepSeek-OCR family model "
            "nor a causal language model"
        )
    return CAUSAL_LM, config


def model_class_of(family: str) -> type:
    """The transformers class that builds and loads a model of ``family`` (named in the family table)."""
    return getattr(transformers, family_names(family).model_class)


def resolve_config(name_or_path: str | os.PathLike | None) -> ResolvedConfig:
    """Resolve ``name_or_path`` (None = the embedded default) to its family, config and class.

    Order: the embedded default; a local directory with a ``config.json``; an architecture shipped
    with the package (works offline); finally the Hugging Face Hub when online.
    """
    if name_or_path is None or str(name_or_path) == EMBEDDED_MODEL_NAME:
        return ResolvedConfig(EMBEDDED_MODEL_NAME, DEEPSEEK_OCR2, embedded_config(), model_class_of(DEEPSEEK_OCR2))
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ValueError(f"model: directory {path} has no config.json")
        family, config = _config_from_dict(json.loads(config_file.read_text(encoding="utf-8")), str(config_file))
        return ResolvedConfig(name, family, config, model_class_of(family), local_dir=path)
    known = KNOWN_ARCHITECTURES.get(name.lower())
    if known is not None:
        config_dict = json.loads((ARCHITECTURES_DIR / known).read_text(encoding="utf-8"))
        family, config = _config_from_dict(config_dict, f"shipped architecture {known}")
        return ResolvedConfig(name, family, config, model_class_of(family))
    return _resolve_from_hub(name)


def _resolve_from_hub(name: str) -> ResolvedConfig:
    from huggingface_hub import hf_hub_download

    known = ", ".join(sorted(KNOWN_ARCHITECTURES))
    if "/" not in name:
        raise ValueError(f"model: {name!r} is neither a local directory nor a hub name (org/name); known offline: {known}")
    try:
        config_file = hf_hub_download(name, "config.json")
    except Exception as error:  # any hub failure becomes one clear error for the user
        raise ModelNotFoundError(
            f"model: {name!r} is not a local directory, not a shipped architecture ({known}), "
            f"and its config could not be fetched from the Hub ({type(error).__name__})"
        ) from error
    family, config = _config_from_dict(json.loads(Path(config_file).read_text(encoding="utf-8")), name)
    return ResolvedConfig(name, family, config, model_class_of(family), local_dir=None)
