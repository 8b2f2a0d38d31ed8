"""Where a model's MoE routers are (under PEFT's wrappers or not) and what they decide.

The base of :mod:`deepsynth.training.moe`: the regularisers and the telemetry both hook the routers
found here and share its helpers (PEFT-free names, layer order, "is autograd recomputing?").
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from deepsynth.models.families import ROUTER, family_names

# PEFT inserts these between a module's name and the module it wraps.
_PEFT_INFIXES = re.compile(r"\.(base_layer|original_module|modules_to_save\.[^.]+)(?=\.|$)")


def _is_peft_wrapper(module: nn.Module) -> bool:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper))


def strip_peft(name: str) -> str:
    """``name`` without PEFT's prefix and wrapper infixes (``…layers.1.mlp.gate.modules_to_save.default.weight`` →
    ``…layers.1.mlp.gate.weight``)."""
    return _PEFT_INFIXES.sub("", name.removeprefix("base_model.model."))


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (or ``model`` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def find_routers(model: nn.Module, family: str) -> list[tuple[str, nn.Module]]:
    """(layer name, router module) for every MoE router of ``model``'s language model.

    The router is the innermost module (a ``TopkRouter``), under PEFT's wrappers when there are
    some; a full-training copy (``modules_to_save``) and its frozen original are both returned. The
    layer name is PEFT-free, e.g. ``model.language_model.layers.1``.
    """
    names = family_names(family)
    if not names.router:
        return []
    layer = names.layer_prefix.removesuffix(r"\.")
    pattern = re.compile(f"^({layer})" + re.escape(f".{names.mlp}.{names.router}") + "$")
    found = []
    for name, module in model.named_modules():
        match = pattern.match(strip_peft(name))
        if match and not _is_peft_wrapper(module) and hasattr(module, "top_k") and hasattr(module, "num_experts"):
            found.append((match.group(1), module))
    return found


def router_parameters(model: nn.Module, family: str) -> dict[str, nn.Parameter]:
    """The trainable router tensors of ``model`` (router LoRA A/B, a full router copy), by name."""
    names = family_names(family)
    if not names.router:
        return {}
    return {name: p for name, p in model.named_parameters() if p.requires_grad and names.group_of(name) == ROUTER}


def in_backward() -> bool:
    """True while autograd runs a backward pass (e.g. a checkpointed layer being recomputed)."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


def layer_key(item: tuple[str, Any]) -> tuple:
    """Sort key of a (layer name, value) pair: layer 10 after layer 9, not after layer 1."""
    return tuple(int(part) if part.isdigit() else part for part in item[0].split("."))


def route_from_logits(router: nn.Module, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-k weights, top-k indices) from router logits, exactly as the DeepSeek TopkRouter computes them."""
    scores = logits.softmax(dim=-1, dtype=torch.float32)
    if getattr(router, "topk_method", "greedy") == "group_limited_greedy":
        groups, experts = router.num_group, router.num_experts
        group_scores = scores.view(-1, groups, experts // groups).max(dim=-1).values
        group_idx = torch.topk(group_scores, k=router.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
        score_mask = group_mask.unsqueeze(-1).expand(-1, groups, experts // groups).reshape(-1, experts)
        scores = scores.masked_fill(~score_mask.bool(), 0.0)
    weights, indices = torch.topk(scores, k=router.top_k, dim=-1, sorted=False)
    return weights * getattr(router, "routed_scaling_factor", 1.0), indices


def routing_decisions(model: nn.Module, family: str, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Top-k expert indices per MoE layer for one forward of ``inputs`` (sorted per token, eval mode)."""
    decisions: dict[str, torch.Tensor] = {}
    handles = []
    for layer, router in find_routers(model, family):
        def hook(module, args, output, layer=layer):
            decisions[layer] = output[2].sort(dim=-1).values.cpu()
        handles.append(router.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return dict(sorted(decisions.items(), key=layer_key))
