"""Sharded training through accelerate's engines (FSDP2; DeepSpeed ZeRO): what the recipe does differently.

With DDP every rank holds the whole model, so rank 0 alone can evaluate and save. Once the
weights are sharded (FSDP2, ZeRO-3) each forward needs every rank, so:

* the before/after evaluations run on every rank, on the same rows (FSDP2 gathers each layer's
  shards as it runs; greedy decoding then gives every rank the same tokens, and ``generate`` keeps
  the ranks in step until the longest one ends — ``synced_gpus``);
* the baseline runs once the Trainer has sharded the model (a callback at ``on_train_begin``);
* the trainable tensors are gathered (every rank takes part) before rank 0 writes the adapter;
* the vision feature cache is off (it would run the vision encoder before sharding, and with
  ``fsdp_cpu_ram_efficient_loading`` the ranks other than 0 hold no weights then).

accelerate decides everything else (wrapping, loading, checkpoints). One gap is filled here:
accelerate 1.x turns ``distributed_type: FSDP`` into FSDP only on accelerator devices; on CPU
processes (gloo) it silently runs DDP instead. PyTorch's FSDP2 itself runs on the CPU with gloo,
so :func:`enable_fsdp_on_cpu` gives accelerate's state the FSDP plugin it built from the launcher's
settings (CI and this machine test the sharded path on 2 CPU processes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback

from deepsynth.training.errors import ConfigError

LOGGER = logging.getLogger("deepsynth")

FEATURE_CACHE_OFF = ("weights sharded across processes (FSDP2 / ZeRO-3): the vision encoder runs inside the "
                     "sharded forward, with every rank")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def fsdp_requested() -> bool:
    """Whether ``accelerate launch`` was given an FSDP config (``distributed_type: FSDP``)."""
    return _env_true("ACCELERATE_USE_FSDP")


def deepspeed_stage() -> int | None:
    """The ZeRO stage ``accelerate launch`` was given (None: no DeepSpeed)."""
    if not _env_true("ACCELERATE_USE_DEEPSPEED"):
        return None
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    if stage is None and os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        import json
        from pathlib import Path

        try:
            stage = json.loads(Path(os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"]).read_text()).get(
                "zero_optimization", {}).get("stage")
        except (OSError, ValueError, AttributeError):
            stage = None  # accelerate reports the unreadable file itself
    return int(stage) if stage not in (None, "") else None


def weights_sharded() -> bool:
    """Whether each rank holds only a shard of the weights (FSDP, or ZeRO stage 3)."""
    return fsdp_requested() or deepspeed_stage() == 3


def check_sharding_supported(config: Any) -> None:
    """Refuse at once, naming the setting, what the sharded engines cannot run here."""
    if fsdp_requested():
        version = os.environ.get("FSDP_VERSION", "1")
        if version != "2":
            raise ConfigError("fsdp_version", version, "2 in the accelerate config (DeepSynth runs FSDP2, "
                              "fully_shard; FSDP1 is deprecated upstream)")
        if config.lora_quantization:
            raise ConfigError("lora_quantization", config.lora_quantization,
                              "none under FSDP: bitsandbytes' packed 4/8-bit weights (and the NF4 fused "
                              "experts) are not sharded by FSDP2 here — run QLoRA with ddp.yaml, one "
                              "process per device")
    if deepspeed_stage() is not None:
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError("distributed_type", "DEEPSPEED", "DeepSpeed installed (pip install deepspeed), "
                              "or an FSDP2 config (examples/accelerate/fsdp.yaml)")


def enable_fsdp_on_cpu() -> None:
    """Start accelerate's state, with FSDP2 on CPU processes when the launcher asked for FSDP.

    Called before the model is loaded: with ``fsdp_cpu_ram_efficient_loading`` the ranks other
    than 0 skip reading the weights (``deepsynth.models.loading.weights_broadcast_from_rank0``), which
    needs the process group. On GPUs accelerate sets FSDP itself; the state is the same.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, TorchDynamoPlugin

    if not fsdp_requested():
        return
    cpu = not torch.cuda.is_available()
    plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* settings
    state = AcceleratorState(cpu=cpu, fsdp_plugin=plugin, dynamo_plugin=TorchDynamoPlugin(), _from_accelerator=True)
    if state.distributed_type == DistributedType.MULTI_CPU:
        # accelerate sets FSDP for accelerator devices only (state.py); the CPU case is the same plugin.
        # Both shared states: AcceleratorState copies PartialState's each time it is instantiated.
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = plugin
        LOGGER.info("FSDP%s on %d CPU processes (gloo)", plugin.fsdp_version, state.num_processes)


def sharding_training_arguments() -> dict[str, Any]:
    """``TrainingArguments`` keywords: keep the state :func:`enable_fsdp_on_cpu` configured (transformers
    otherwise resets accelerate's state and rebuilds it, without FSDP on CPU processes)."""
    return {"accelerator_config": {"use_configured_state": True}} if fsdp_requested() else {}


def mark_fsdp_managed(model: torch.nn.Module) -> None:
    """Tell transformers' ``generate`` that the model is sharded, so that it keeps the ranks in step
    (``synced_gpus``) until every rank's generation ended: it checks the attribute its own FSDP2
    wrapping sets (``is_fsdp_managed_module``); accelerate's wrapping does not set it."""
    for module in model.modules():
        module._is_fsdp_managed_module = True


class BaselineOnAllRanks(TrainerCallback):
    """Runs the before-training evaluation once the Trainer has sharded the model, on every rank.

    ``evaluate(model)`` is the recipe's evaluation; rank 0 keeps its result in ``self.result``.
    On a resumed run the baseline is the base model again (adapter disabled), as without sharding.
    """

    def __init__(self, evaluate: Callable[[torch.nn.Module], Any]) -> None:
        self.evaluate = evaluate
        self.result: Any = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: D102 (TrainerCallback API)
        mark_fsdp_managed(model)
        self.result = self.evaluate(model)


def gathered_trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors, whole (each shard gathered; every rank must call this, in step).

    Only the adapter is gathered, never the frozen base: the base stays sharded.
    """
    state: dict[str, torch.Tensor] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if hasattr(parameter, "ds_id"):  # ZeRO-3 partition (not run here: see docs/performance.md)
            import deepspeed

            with deepspeed.zero.GatheredParameters([parameter]):
                state[name] = parameter.detach().cpu().clone()
            continue
        tensor = parameter.detach()
        full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor  # FSDP2: a DTensor shard
        state[name] = full.cpu().contiguous()
    return state


def local_weight_share(model: torch.nn.Module) -> tuple[int, int]:
    """(elements this rank holds, elements of the whole model): about 1/N each once FSDP2 sharded it."""
    local = total = 0
    for parameter in model.parameters():
        total += parameter.numel()
        local += parameter.to_local().numel() if hasattr(parameter, "to_local") else parameter.numel()
    return local, total


def trainable_named_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """name → whole trainable tensor: gathered when sharded (all ranks), else the parameters themselves."""
    if weights_sharded():
        return gathered_trainable_state(model)
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
