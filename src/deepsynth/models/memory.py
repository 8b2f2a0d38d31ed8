"""Keeping a real-size model within memory: shards read without mmap, a staged upcast, the vision path let go.

Three things transformers does not do for a fine-tuning run that DeepSynth needs at real size
(measured in docs/performance.md, "From the user's checkpoint folder"):

* :func:`shards_read_without_mmap` — ``from_pretrained`` opens every safetensors shard with mmap and
  keeps them all open until the last tensor is loaded, so every byte it reads stays in the process's
  resident set (6.7 GB for DeepSeek-OCR) on top of the model; read with ``pread`` instead, each
  tensor's bytes are freed once converted. safetensors offers that backend, transformers only picks
  it on Windows and Apple GPUs;
* :func:`storage_dtype` / :func:`upcast` — a checkpoint stored in bf16 trained in fp32 (the CPU) is
  loaded as stored and upcast once its pages are encoded and its vision path released, so the whole
  model never exists in fp32 (bf16 → fp32 is exact: the values are those of a fp32 load);
* :func:`release_vision` — once every page of the run is encoded (the feature cache), the frozen
  vision encoder, projector and separators give their memory back, and any later use fails loudly
  instead of computing with stand-in weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from deepsynth.models.families import family_names

__all__ = ["VisionReleasedError", "keep_embeddings_stored", "log_memory", "narrow_to_stored", "release_vision", "return_freed_memory", "shards_read_without_mmap", "storage_dtype", "upcast", "vision_released"]

LOGGER = logging.getLogger(__name__)
_STORED_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@contextlib.contextmanager
def shards_read_without_mmap() -> Iterator[None]:
    """While inside, transformers reads safetensors shards on the CPU with ``pread`` rather than mmap (see above)."""
    from transformers import modeling_utils

    original = modeling_utils.safe_open

    def pread_open(filename, framework="pt", device="cpu", backend="mmap"):
        return original(filename, framework=framework, device=device,
                        backend="pread" if str(device) == "cpu" else backend)

    modeling_utils.safe_open = pread_open
    try:
        yield
    finally:
        modeling_utils.safe_open = original


def storage_dtype(checkpoint_dir: Path | None) -> torch.dtype | None:
    """The dtype a checkpoint folder's weights are stored in (its config.json says), None when unknown."""
    if checkpoint_dir is None or not (Path(checkpoint_dir) / "config.json").is_file():
        return None
    config = json.loads((Path(checkpoint_dir) / "config.json").read_text(encoding="utf-8"))
    name = config.get("dtype") or config.get("torch_dtype")
    return _STORED_DTYPES.get(str(name).removeprefix("torch.")) if name else None


def _base(model: nn.Module) -> nn.Module:
    getter = getattr(model, "get_base_model", None)
    return getter() if callable(getter) else model


def _tensors(model: nn.Module, prefixes: tuple[str, ...] | None = None) -> Iterator[tuple[dict, str, torch.Tensor]]:
    """(the dict holding it, its key, tensor) of every parameter and buffer, or of those under ``prefixes``."""
    for module_name, module in _base(model).named_modules():
        for collection in (module._parameters, module._buffers):
            for leaf, tensor in collection.items():
                full = f"{module_name}.{leaf}" if module_name else leaf
                if tensor is not None and (prefixes is None or full.startswith(prefixes)):
                    yield collection, leaf, tensor


def _is_stand_in(tensor: torch.Tensor) -> bool:
    """A released weight: a zero-storage view of one element, expanded to the weight's shape."""
    return tensor.numel() > 1 and all(stride == 0 for stride in tensor.stride())


class VisionReleasedError(RuntimeError):
    """The vision path was released after the run's pages were encoded, and something asked it for more."""


def _refuse(module: nn.Module, args: tuple) -> None:
    raise VisionReleasedError(
        "the vision encoder was released once every page of the run was encoded (deepsynth.models.memory): "
        "pass the cached features (mm_encoder_outputs), or load the model again to encode new pages")


def release_vision(model: nn.Module, family: str) -> int:
    """Let go of the frozen vision path's weights; returns the bytes released.

    Only once every page the run will read is encoded: the model then takes cached features
    (``mm_encoder_outputs``). Each weight becomes a zero-storage stand-in of the same shape, dtype and
    device (so parameter counts, ``model.to(device)`` and reports still work), and the vision modules
    refuse to run (:class:`VisionReleasedError`) rather than compute with the stand-ins.
    """
    prefixes = family_names(family).frozen_prefixes
    released = 0
    for collection, key, tensor in list(_tensors(model, prefixes)):
        if _is_stand_in(tensor):
            continue
        released += tensor.numel() * tensor.element_size()
        stand_in = torch.zeros((), dtype=tensor.dtype, device=tensor.device).expand(tensor.shape)
        collection[key] = nn.Parameter(stand_in, requires_grad=False) if isinstance(tensor, nn.Parameter) else stand_in
    base = _base(model)
    for name, module in base.named_modules():
        if f"{name}." in prefixes and not getattr(module, "_deepsynth_released", False):
            module.register_forward_pre_hook(_refuse)
            module._deepsynth_released = True
    base._deepsynth_vision_released = True
    LOGGER.info("vision path released: %.1f MiB", released / 2**20)
    return released


def vision_released(model: nn.Module) -> bool:
    """Whether :func:`release_vision` ran on ``model``."""
    return bool(getattr(_base(model), "_deepsynth_vision_released", False))


def narrow_to_stored(model: nn.Module, stored: torch.dtype | None, family: str) -> int:
    """Hold the weights outside the vision path in the checkpoint's ``stored`` dtype while the pages are
    encoded (the language model is idle then); :func:`upcast` brings them back. Parameters only — they
    came from the checkpoint, so the round trip is exact; buffers computed at build time (rotary
    frequencies) are left alone. A 4-bit load (its unquantized ``lm_head`` and embeddings in fp32 on a
    CPU) then peaks lower while its pages are encoded. Returns how many tensors were narrowed."""
    if stored is None:
        return 0
    vision = family_names(family).frozen_prefixes
    narrowed = 0
    for name, parameter in _base(model).named_parameters():
        if (not name.startswith(vision) and parameter.is_floating_point()
                and torch.finfo(parameter.dtype).bits > torch.finfo(stored).bits and not _is_stand_in(parameter)):
            parameter.data = parameter.data.to(stored)
            narrowed += 1
    return narrowed


def upcast(model: nn.Module, dtype: torch.dtype, family: str | None = None) -> int:
    """Cast every floating-point tensor held in a lower precision than ``dtype`` to it, one at a time.

    With ``family``, only its vision path (which encodes the pages before the rest is needed).
    A released vision path's stand-ins are left as they are. Returns how many tensors were cast.
    """
    prefixes = family_names(family).frozen_prefixes if family else None
    width = torch.finfo(dtype).bits
    kept = {id(module.weight) for module in _base(model).modules() if getattr(module, "_deepsynth_kept_dtype", None)}
    cast = 0
    for _, _, tensor in _tensors(model, prefixes):
        if id(tensor) in kept:
            continue  # frozen embeddings held as stored (keep_embeddings_stored)
        if tensor.is_floating_point() and torch.finfo(tensor.dtype).bits < width and not _is_stand_in(tensor):
            tensor.data = tensor.data.to(dtype)
            cast += 1
    return cast


def return_freed_memory() -> None:
    """Ask the C allocator to give freed heap memory back to the system (glibc's ``malloc_trim``).

    Why: the vision path's weights and the bf16 copies of a staged upcast are freed in pieces small
    enough for glibc to keep them in its heap, where they still count in the resident set. Elsewhere
    (no glibc) nothing is done.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)


class _PeakSampler:
    """The resident set's peak between two :func:`log_memory` calls, sampled every 20 ms by a daemon thread.

    Why sampled: the kernel keeps one peak per process (VmHWM); resetting it (``clear_refs``) would also
    erase the peak a parent reads with ``wait4``, which the benchmarks use. So each step's own peak
    (the training loop's, the evaluation's) is sampled instead; a spike shorter than 20 ms can be missed.
    """

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._peak_pages = 0
        threading.Thread(target=self._sample, name="deepsynth-rss-sampler", daemon=True).start()

    @staticmethod
    def resident_pages() -> int:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1])

    def _sample(self) -> None:
        import time

        while True:
            pages = self.resident_pages()
            with self._lock:
                self._peak_pages = max(self._peak_pages, pages)
            time.sleep(0.02)

    def take(self) -> int:
        """The peak since the last call, in bytes (the current resident set included), and start again."""
        current = self.resident_pages()
        with self._lock:
            peak, self._peak_pages = max(self._peak_pages, current), current
        return peak * _PAGE_BYTES


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_SAMPLER: _PeakSampler | None = None


def log_memory(step: str) -> None:
    """Log the resident memory after ``step``, the step's own peak and the process's peak so far (Linux only).

    The first call reports the process's peak as the step's (nothing sampled before it); from then on a
    sampler measures each step's peak, so a run's log says which step sets its peak.
    """
    global _SAMPLER
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii").splitlines()
    except OSError:
        return
    fields = {line.split(":")[0]: line.split()[1] for line in status if line.startswith(("VmRSS", "VmHWM"))}
    if len(fields) != 2:
        return
    peak_so_far = int(fields["VmHWM"]) * 1024
    step_peak = peak_so_far if _SAMPLER is None else min(_SAMPLER.take(), peak_so_far)
    if _SAMPLER is None:
        _SAMPLER = _PeakSampler()
    cuda = (f", CUDA peak so far {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
            if torch.cuda.is_available() and torch.cuda.is_initialized() else "")
    LOGGER.info("memory after %s: %.0f MiB resident, peak during it %.0f MiB, peak so far %.0f MiB%s", step,
                int(fields["VmRSS"]) / 1024, step_peak / 2**20, peak_so_far / 2**20, cuda)


def _to_dtype_hook(dtype: torch.dtype):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output.to(dtype)

    return hook


def keep_embeddings_stored(model: nn.Module, stored: torch.dtype | None, run_dtype: torch.dtype) -> int:
    """Hold the frozen input embeddings in the checkpoint's ``stored`` dtype; their output in ``run_dtype``.

    A lookup copies rows, so casting the rows a step needs is exact: the model computes what it would
    with a ``run_dtype`` table (bf16 → fp32 is exact), and the table — 129,280 × 1,280 at DeepSeek-OCR's
    size, 631 MiB in fp32 — costs half. Only for a frozen table narrower as stored than the run; returns
    the bytes saved (0 when nothing was done). Call before LoRA is applied and only when nothing trains
    the embeddings (no ``modules_to_save``, not a full fine-tune).
    """
    base = _base(model)
    embeddings, output = base.get_input_embeddings(), base.get_output_embeddings()
    weight = getattr(embeddings, "weight", None)
    if (stored is None or weight is None or not weight.is_floating_point()
            or torch.finfo(stored).bits >= torch.finfo(run_dtype).bits
            or getattr(output, "weight", None) is weight):  # tied to lm_head: that matmul needs run_dtype
        return 0
    weight.requires_grad_(False)  # the caller made sure nothing trains it
    if weight.dtype != stored:
        weight.data = weight.data.to(stored)
    embeddings.register_forward_hook(_to_dtype_hook(run_dtype))
    embeddings._deepsynth_kept_dtype = stored
    return weight.numel() * (torch.finfo(run_dtype).bits - torch.finfo(stored).bits) // 8
