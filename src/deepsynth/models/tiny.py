"""The embedded default model: a tiny DeepSeek-OCR-2 that needs no download.

``deepsynth/tiny-ocr2`` is the real transformers class ``DeepseekOcr2ForConditionalGeneration``
(SAM → Qwen2-style encoder → projector → DeepSeek MoE language model) shrunk to a few million
parameters, with a byte-level BPE tokenizer and a ``DeepseekOcr2Processor`` shipped as package
data. Everything the real models go through (image-token expansion, MoE routing, LoRA targeting,
saving and reloading) runs on it on a laptop CPU in seconds.

Geometry — why 384 px pages and 145 vision tokens:

* The native vision model always emits a fixed number of learned queries: 144 when the SAM
  feature map has at most 144 cells, 256 otherwise. So 144 (+1 view separator) is the smallest
  number of vision tokens the class can produce; it cannot be configured lower.
* The SAM feature map is ``image / patch / 4`` cells a side. A 384 px page with 8 px SAM patches
  gives a 48×48 patch grid and a 12×12 = 144 map: exactly the query count, the same ratio as the
  real model's 768 px mode (16 px patches), so nothing is interpolated or discarded.
* 384 px keeps a rendered French page legible (DejaVu Sans at ~12–14 px: accents distinct) for a
  later "learn to read" pretraining step, while every SAM layer uses windowed attention
  (12×12 windows tile the 48×48 grid exactly) so the vision forward stays ~15 ms on 2 CPU cores.

Weights: the pretrained checkpoint shipped in ``assets/tiny-ocr2/model.safetensors``
(``scripts/pretrain_tiny.py``, docs/pretraining.md) is used first; without it, or with
``load_embedded(pretrained=False)``, the model is built with a seeded random init once and cached
under ``$DEEPSYNTH_CACHE`` (default ``~/.cache/deepsynth``) ``/tiny-ocr2/<version>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import (
    DeepseekOcr2Config,
    DeepseekOcr2ForConditionalGeneration,
    DeepseekOcr2Processor,
    PreTrainedTokenizerBase,
)
from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import DeepseekOcr2ImageProcessorPil

__all__ = [
    "EMBEDDED_MODEL_NAME",
    "IMAGE_SIZE",
    "NUM_VISION_TOKENS",
    "TOKENIZER_DIR",
    "build_embedded_model",
    "build_processor",
    "cache_root",
    "embedded_cache_dir",
    "embedded_config",
    "embedded_version",
    "load_embedded",
    "shipped_checkpoint",
    "shipped_tokenizer",
]

EMBEDDED_MODEL_NAME = "deepsynth/tiny-ocr2"
# Bump when the architecture or init changes in a way the fingerprint below would not see.
TINY_MODEL_VERSION = "1"

ASSETS_DIR = Path(__file__).parent / "assets"
TOKENIZER_DIR = ASSETS_DIR / "tokenizer"
# A pretrained checkpoint (config.json + model.safetensors) shipped here takes precedence.
SHIPPED_DIR = ASSETS_DIR / "tiny-ocr2"

# Page geometry (see the module docstring).
IMAGE_SIZE = 384
SAM_PATCH_SIZE = 8
DOWNSAMPLE_RATIO = 4  # SAM neck: two stride-2 convolutions
NUM_VISION_TOKENS = (IMAGE_SIZE // SAM_PATCH_SIZE // DOWNSAMPLE_RATIO) ** 2 + 1  # 144 queries + separator

# Ids fixed by scripts/build_tokenizer.py (special tokens are trained first, in this order).
VOCAB_SIZE = 4096
BOS_TOKEN_ID = 0
EOS_TOKEN_ID = 1
PAD_TOKEN_ID = 2
IMAGE_TOKEN_ID = 3

_TEXT_LAYERS = 4  # layer 0 dense, then MoE, like DeepSeek-OCR (first_k_dense_replace = 1)


def embedded_config() -> DeepseekOcr2Config:
    """Configuration of the embedded tiny DeepSeek-OCR-2 (no weights, no file access)."""
    sam_config = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "mlp_dim": 256,
        "image_size": IMAGE_SIZE,
        "patch_size": SAM_PATCH_SIZE,
        "window_size": 12,
        # No global-attention SAM layer: on a 48×48 grid it would cost 3× the rest of the vision
        # forward; the Qwen2-style encoder after it attends globally anyway.
        "global_attn_indexes": [],
        "output_channels": 64,
        # The last channel count is the encoder's hidden size (SAM features feed it directly).
        "downsample_channels": [96, 128],
    }
    encoder_config = {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,  # 144 patches + 144 queries
        "vocab_size": 1,  # the encoder has no token embedding; keeps the config honest
    }
    text_config = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 128,
        "intermediate_size": 384,
        "moe_intermediate_size": 128,
        "num_hidden_layers": _TEXT_LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "n_shared_experts": 1,
        "n_group": 1,
        "topk_group": 1,
        "topk_method": "greedy",
        "mlp_layer_types": ["dense"] + ["sparse"] * (_TEXT_LAYERS - 1),
        "max_position_embeddings": 4096,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
        "pad_token_id": PAD_TOKEN_ID,
    }
    return DeepseekOcr2Config(
        vision_config={"sam_config": sam_config, "encoder_config": encoder_config},
        text_config=text_config,
        image_token_id=IMAGE_TOKEN_ID,
        tie_word_embeddings=False,
    )


def shipped_tokenizer() -> PreTrainedTokenizerBase:
    """The shipped French byte-level BPE tokenizer (built by ``scripts/build_tokenizer.py``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


def build_processor(tokenizer: PreTrainedTokenizerBase | None = None) -> DeepseekOcr2Processor:
    """The real ``DeepseekOcr2Processor`` configured for 384 px pages, one global view, no tiles.

    ``crop_to_patches=False``: a 384 px page needs no local tiles, and with tiling off the image
    processor resizes the global view to ``tile_size`` while the processor counts tokens from
    ``size``; both are 384 so the two agree. The PIL backend avoids a torchvision dependency.
    """
    if tokenizer is None:
        tokenizer = shipped_tokenizer()
    image_processor = DeepseekOcr2ImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        tile_size=IMAGE_SIZE,
        crop_to_patches=False,
        image_mean=[0.5, 0.5, 0.5],  # DeepSeek-OCR normalises with mean = std = 0.5
        image_std=[0.5, 0.5, 0.5],
    )
    return DeepseekOcr2Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=SAM_PATCH_SIZE,
        downsample_ratio=DOWNSAMPLE_RATIO,
    )


def _set_generation_ids(model: DeepseekOcr2ForConditionalGeneration) -> None:
    # The ids live in text_config; generate() reads generation_config.
    model.generation_config.bos_token_id = BOS_TOKEN_ID
    model.generation_config.eos_token_id = EOS_TOKEN_ID
    model.generation_config.pad_token_id = PAD_TOKEN_ID


def build_embedded_model(seed: int = 0) -> tuple[DeepseekOcr2ForConditionalGeneration, DeepseekOcr2Processor]:
    """Build the tiny model with a random init that depends only on ``seed``, plus its processor.

    The global torch RNG is left untouched (the init runs in a forked RNG state).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DeepseekOcr2ForConditionalGeneration(embedded_config())
    _set_generation_ids(model)
    model.eval()
    return model, build_processor()


def shipped_checkpoint() -> Path | None:
    """Directory of a pretrained tiny checkpoint shipped with the package, if there is one."""
    if (SHIPPED_DIR / "model.safetensors").is_file() and (SHIPPED_DIR / "config.json").is_file():
        return SHIPPED_DIR
    return None


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """Root of DeepSynth's cache: ``cache_dir``, else ``$DEEPSYNTH_CACHE``, else ``~/.cache/deepsynth``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("DEEPSYNTH_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "deepsynth"


def embedded_version(seed: int = 0) -> str:
    """Cache key: version + a fingerprint of the config, the tokenizer and the seed.

    Any change to them gives a new directory, so a stale cache is never reused.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(embedded_config().to_dict(), sort_keys=True, default=str).encode())
    digest.update((TOKENIZER_DIR / "tokenizer.json").read_bytes())
    digest.update(f"seed={seed}".encode())
    return f"v{TINY_MODEL_VERSION}-{digest.hexdigest()[:12]}"


def embedded_cache_dir(cache_dir: Path | str | None = None, seed: int = 0) -> Path:
    """Where ``load_embedded`` keeps the built model: ``<cache root>/tiny-ocr2/<version>``."""
    return cache_root(cache_dir) / "tiny-ocr2" / embedded_version(seed)


def _is_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in ("config.json", "model.safetensors", "processor_config.json"))


def load_embedded(
    cache_dir: Path | str | None = None, *, seed: int = 0, pretrained: bool = True
) -> tuple[DeepseekOcr2ForConditionalGeneration, DeepseekOcr2Processor]:
    """Load the embedded model and processor: shipped weights, else the cache, else build and cache.

    ``pretrained=False`` skips the shipped weights and gives the seeded random-init model (what
    ``scripts/pretrain_tiny.py`` starts from). ``cache_dir`` replaces the cache root (same meaning
    as ``$DEEPSYNTH_CACHE``). The first random-init call builds the model and writes it with
    ``save_pretrained``; later calls read it back, so every process sees identical weights.
    """
    shipped = shipped_checkpoint() if pretrained else None
    if shipped is not None:
        model = DeepseekOcr2ForConditionalGeneration.from_pretrained(str(shipped), local_files_only=True)
        _set_generation_ids(model)
        return model.eval(), build_processor()

    target = embedded_cache_dir(cache_dir, seed)
    if _is_complete(target):
        model = DeepseekOcr2ForConditionalGeneration.from_pretrained(str(target), local_files_only=True)
        processor = DeepseekOcr2Processor.from_pretrained(str(target), local_files_only=True)
        _set_generation_ids(model)
        return model.eval(), processor

    model, processor = build_embedded_model(seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a sibling temp dir and rename: a concurrent or interrupted run never leaves a
    # half-written cache that a later call would trust.
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        model.save_pretrained(str(staging))
        processor.save_pretrained(str(staging))
        try:
            staging.rename(target)
        except OSError:
            if not _is_complete(target):  # another process won the race only if it finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model, processor
