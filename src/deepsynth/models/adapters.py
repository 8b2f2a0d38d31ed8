"""Load a trained DeepSynth adapter folder back onto its base model; merge it for export."""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file

from deepsynth.models.loading import LoadedModel, load_model_and_processor

# Files a DeepSynth run writes beside the PEFT adapter.
TRAINING_CONFIG_FILE = "training_config.json"


@dataclass
class AdaptedModel:
    """A base model with a DeepSynth adapter applied, and what the run recorded."""

    model: PeftModel
    loaded: LoadedModel
    training_config: dict[str, Any]


def read_training_config(adapter_dir: str | Path) -> dict[str, Any]:
    """The ``training_config.json`` of an adapter folder (raises ValueError naming the folder)."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(f"adapter: {adapter_dir} has no adapter_config.json (not a DeepSynth/PEFT adapter folder)")
    path = adapter_dir / TRAINING_CONFIG_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


_LORA_TENSOR = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)\.")


def load_adapter_weights(model: PeftModel, adapter_dir: str | Path, adapter_name: str = "default") -> int:
    r"""Copy the tensors of ``adapter_dir/adapter_model.safetensors`` into ``model``'s adapter, by exact name.

    Why not PEFT's loader alone: with transformers 5, PEFT applies the model's legacy checkpoint
    renaming to adapter keys, and DeepSeek-OCR's rule ``(^|model\.)layers\.`` → ``language_model.layers.``
    also matches inside ``language_model.layers.``, so every adapter key is mangled and the adapter
    silently stays at its initial value (a warning lists "missing adapter keys"). Resuming a run
    goes through the same path. Adapters saved by PEFT use the native names, so we load them as
    they are and fail loudly if anything does not match.
    """
    path = Path(adapter_dir) / "adapter_model.safetensors"
    saved = load_file(str(path))
    own = dict(model.named_parameters())
    loaded: set[str] = set()
    with torch.no_grad():
        for key, tensor in saved.items():
            name = _LORA_TENSOR.sub(lambda m: f".{m.group(1)}.{adapter_name}.", key, count=1)
            if name not in own:  # a full copy from modules_to_save
                module, _, leaf = key.rpartition(".")
                name = f"{module}.modules_to_save.{adapter_name}.{leaf}"
            if name not in own:
                raise ValueError(f"adapter: {path} holds {key!r}, which matches no parameter of the model")
            if own[name].shape != tensor.shape:
                raise ValueError(f"adapter: {key!r} in {path} has shape {tuple(tensor.shape)}, "
                                 f"the model expects {tuple(own[name].shape)}")
            own[name].copy_(tensor.to(own[name].dtype))
            loaded.add(name)
    expected = {n for n in own if f".{adapter_name}." in n and (_LORA_TENSOR.search(n) or ".modules_to_save." in n)}
    if expected - loaded:
        raise ValueError(f"adapter: {path} lacks {len(expected - loaded)} tensors of the adapter, e.g. {sorted(expected - loaded)[0]}")
    return len(loaded)


# load_adapted_model(quantization=AS_TRAINED): the base in the precision the adapter was trained on.
AS_TRAINED = "as-trained"


def attach_adapter(model: torch.nn.Module, adapter_dir: str | Path) -> PeftModel:
    """``model`` with the PEFT adapter of ``adapter_dir`` applied (exact names, see load_adapter_weights)."""
    from deepsynth.models.quantization import plain_fused_experts

    with warnings.catch_warnings(), plain_fused_experts(model):  # QLoRA bases: same adapter names
        # PEFT warns about the keys its conversion mangled; load_adapter_weights loads them right.
        warnings.filterwarnings("ignore", message="Found missing adapter keys")
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), key_mapping={})
    load_adapter_weights(peft_model, adapter_dir)
    return peft_model


def load_adapted_model(
    adapter_dir: str | Path, *, model_name: str | None = None, device: str | None = None,
    quantization: str | None = AS_TRAINED,
) -> AdaptedModel:
    """Base model (from the run's config, or ``model_name``) with the adapter in ``adapter_dir`` applied.

    ``quantization``: by default the base is loaded as the run trained on it (``lora_quantization``
    of its config: 4/8-bit for QLoRA presets); ``None`` loads it in full precision, ``"4bit"`` /
    ``"8bit"`` quantized.
    """
    training_config = read_training_config(adapter_dir)
    base = model_name if model_name is not None else training_config.get("model_name")
    if quantization == AS_TRAINED:
        quantization = training_config.get("lora_quantization")
    loaded = load_model_and_processor(base, dtype=training_config.get("dtype"), device=device,
                                      quantization=quantization)
    model = attach_adapter(loaded.model, adapter_dir)
    model.eval()
    return AdaptedModel(model, loaded, training_config)
