"""Apply a saved PEFT adapter to a loaded base model, its tensors loaded by exact name.

Reading a whole DeepSynth adapter folder back (its settings, its base model) is
``deepsynth.evaluation.adapter_folder``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file

# The files PEFT writes for an adapter (load_adapter_weights reads the safetensors one).
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"

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
    path = Path(adapter_dir) / ADAPTER_WEIGHTS_FILE
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


def attach_adapter(model: torch.nn.Module, adapter_dir: str | Path) -> PeftModel:
    """``model`` with the PEFT adapter of ``adapter_dir`` applied, in eval mode (exact names, see load_adapter_weights)."""
    from deepsynth.models.quantization.dequantize import plain_fused_experts

    with warnings.catch_warnings(), plain_fused_experts(model):  # QLoRA bases: same adapter names
        # PEFT warns about the keys its conversion mangled; load_adapter_weights loads them right.
        warnings.filterwarnings("ignore", message="Found missing adapter keys")
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), key_mapping={})
    load_adapter_weights(peft_model, adapter_dir)
    peft_model.eval()
    return peft_model
