"""Shared pieces of the benchmarks: the models measured, timing statistics, memory.

Models:

* ``embedded`` — DeepSynth's tiny DeepSeek-OCR-2 (text hidden 128, 4 layers, 8 experts, top-2);
* ``large`` — the same architecture with a bigger language model (text hidden 512, 6 layers,
  16 routed experts, top-4, 2 shared experts; vision tower unchanged, 145 vision tokens per page),
  built with a seeded random init and saved with its processor to a folder, so that DeepSynth and
  a plain transformers script load exactly the same checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

BENCH_DIR = Path(__file__).resolve().parent
MODELS = ("embedded", "large")


def large_config():
    """DeepSeek-OCR-2 config with the embedded vision tower and a bigger MoE language model."""
    from deepsynth.models import tiny

    config = tiny.embedded_config()
    layers = 6
    text = config.text_config
    for key, value in dict(
        hidden_size=512, intermediate_size=1536, moe_intermediate_size=256, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=8, n_routed_experts=16, num_experts_per_tok=4,
        n_shared_experts=2, mlp_layer_types=["dense"] + ["sparse"] * (layers - 1),
    ).items():
        setattr(text, key, value)
    text.num_experts = text.n_routed_experts  # the experts module reads num_experts
    text.head_dim = text.hidden_size // text.num_attention_heads
    return type(config).from_dict(config.to_dict())  # rebuild: derived fields follow the new sizes


def _bench_root(root: Path | None) -> Path:
    return Path(root or os.environ.get("DEEPSYNTH_BENCH_CACHE", Path.home() / ".cache" / "deepsynth-bench"))


def embedded_dir(root: Path | None = None) -> str:
    """The embedded model DeepSynth loads by default (its shipped pretrained weights), saved once with
    its processor as a folder a plain transformers script can load (``from_pretrained``)."""
    import hashlib

    from deepsynth.models import tiny

    shipped = tiny.shipped_checkpoint()
    weights = (shipped / "model.safetensors").read_bytes() if shipped else tiny.embedded_version().encode()
    target = _bench_root(root) / f"embedded-{hashlib.sha256(weights).hexdigest()[:12]}"
    if (target / "model.safetensors").is_file() and (target / "processor_config.json").is_file():
        return str(target)
    model, processor = tiny.load_embedded()
    staging = target.with_name(target.name + f".staging-{os.getpid()}")
    model.save_pretrained(str(staging))
    processor.save_pretrained(str(staging))
    staging.rename(target)
    return str(target)


def model_dir(name: str, root: Path | None = None) -> str | None:
    """The ``model_name`` DeepSynth loads: None (embedded) or a saved folder (large, built once)."""
    if name == "embedded":
        return None
    if name != "large":
        raise ValueError(f"unknown benchmark model {name!r}; expected one of {MODELS}")
    from transformers import DeepseekOcr2ForConditionalGeneration

    from deepsynth.models import tiny

    target = _bench_root(root) / "large-ocr2-v1"
    if (target / "model.safetensors").is_file() and (target / "processor_config.json").is_file():
        return str(target)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DeepseekOcr2ForConditionalGeneration(large_config())
    tiny._set_generation_ids(model)
    staging = target.with_name(target.name + f".staging-{os.getpid()}")
    model.save_pretrained(str(staging))
    tiny.build_processor().save_pretrained(str(staging))
    staging.rename(target)
    return str(target)


def describe(values: Sequence[float]) -> dict[str, float]:
    """min / median / max (and n) of a list of measurements."""
    return {"n": len(values), "min": min(values), "median": statistics.median(values), "max": max(values)}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


def peak_gpu_mib() -> float | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def machine() -> dict[str, Any]:
    info = {
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    import transformers
    import peft

    info.update(transformers=transformers.__version__, peft=peft.__version__)
    return info


def write_json(path: str | Path | None, data: Any) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
