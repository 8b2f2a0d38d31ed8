"""MoE regularisers: dropout on the router's gradient, expert dropout in training forwards, the load-balancing loss.

* **Gate dropout** drops elements of the *gradient* of the trainable router tensors (router LoRA
  A/B, or the full router copy) with a Bernoulli mask rescaled by 1/(1-p): forward passes,
  evaluation and inference are untouched.
* **Expert dropout** withholds, in training forwards only, a random subset of routed experts per
  token: their router logits are masked before softmax / top-k, so the router chooses among the
  experts left. At least ``max(min_keep, top_k)`` experts stay selectable for every token.
* **Load-balancing loss**: transformers' Switch-Transformer loss (``load_balancing_loss_func``, as
  in Mixtral) on the model's ``router_logits``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from deepsynth.models.families import ROUTER_ALIASES, family_names
from deepsynth.training.moe.routers import find_routers, in_backward, route_from_logits, router_parameters, strip_peft

# Seed offsets: the run seed drives every mask, each knob with its own stream.
GATE_DROPOUT_SEED_OFFSET = 1
EXPERT_DROPOUT_SEED_OFFSET = 2


# --------------------------------------------------------------------------------------------------
# Gate dropout: dropout on the router's gradient
# --------------------------------------------------------------------------------------------------


def _names_router(keyword: str, router_path: str) -> bool:
    """Whether ``keyword`` is one or more whole dotted components of ``router_path``."""
    return re.search(rf"(^|\.){re.escape(keyword)}(\.|$)", router_path) is not None


def resolve_gate_dropout(
    model: nn.Module, family: str, keywords: Iterable[str]
) -> tuple[dict[str, nn.Parameter], list[str]]:
    """The trainable router tensors gate dropout applies to, and warnings about keywords that name no router.

    Each keyword selects the routers whose PEFT-free module path it names by whole dotted
    components (``layers.2`` or ``layers.2.mlp.gate``: layer 2's router only); ``gate`` /
    ``router`` (:data:`~deepsynth.models.families.ROUTER_ALIASES`) and the family's router name
    select every router. Only tensors of the router group are ever selected: ``gate_proj`` names
    no router and is ignored, with a warning.
    """
    names = family_names(family)
    if not names.router:
        return {}, []
    paths = {f"{layer}.{names.mlp}.{names.router}" for layer, _ in find_routers(model, family)}
    selected: set[str] = set()
    ignored: list[str] = []
    for word in dict.fromkeys(keywords):
        hits = paths if word in ROUTER_ALIASES else {path for path in paths if _names_router(word, path)}
        selected.update(hits)
        if not hits and not (word in ROUTER_ALIASES or _names_router(word, f"{names.mlp}.{names.router}")):
            ignored.append(word)
    warnings = []
    if ignored:
        warnings.append(
            f"gate_dropout_keywords {ignored} do not name the router ({names.mlp}.{names.router}) and are ignored: "
            "gate dropout applies to the router only, never to gate_proj"
        )
    parameters = {
        name: parameter for name, parameter in router_parameters(model, family).items()
        if any(strip_peft(name).startswith(path + ".") for path in selected)
    }
    return parameters, warnings


class GateDropout:
    """Drops each element of the router's gradient with probability ``rate`` (survivors × 1/(1-rate)).

    Installed with ``Tensor.register_hook`` on each trainable router tensor; one fresh mask per
    backward pass and tensor, drawn on CPU from a generator seeded with ``seed``.
    """

    def __init__(self, rate: float, seed: int = 0) -> None:
        if not 0 <= rate < 1:
            raise ValueError(f"gate dropout rate: expected a number in [0, 1), got {rate}")
        self.rate = rate
        self.generator = torch.Generator().manual_seed(seed)
        self.dropped = 0
        self.total = 0
        self._handles: list[Any] = []

    def attach(self, parameters: Iterable[torch.Tensor]) -> "GateDropout":
        for parameter in parameters:
            self._handles.append(parameter.register_hook(self.mask_gradient))
        return self

    def mask_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        keep = torch.rand(grad.shape, generator=self.generator) >= self.rate
        self.dropped += int(keep.numel() - keep.sum())
        self.total += keep.numel()
        return grad * keep.to(device=grad.device, dtype=grad.dtype) / (1.0 - self.rate)

    @property
    def dropped_fraction(self) -> float | None:
        return self.dropped / self.total if self.total else None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


# --------------------------------------------------------------------------------------------------
# Expert dropout: withhold routed experts in training forwards
# --------------------------------------------------------------------------------------------------


class ExpertDropout:
    """Withholds routed experts in training forwards; evaluation and generation are untouched.

    For each training forward, MoE layer and token, every routed expert is withheld independently
    with probability ``rate``; then experts are restored at random until at least
    ``max(min_keep, top_k)`` are selectable. Withheld experts get the lowest representable logit
    before softmax and top-k, so the router picks among the others exactly as a router without
    those experts would (their probability is 0, the others' renormalise). The router's first output
    (``router_logits``, which the aux loss reads) is the masked logits. A checkpointed layer
    recomputed during backward reuses the mask of its forward.
    """

    def __init__(self, rate: float, min_keep: int = 1, seed: int = 0) -> None:
        if not 0 <= rate < 1:
            raise ValueError(f"expert dropout rate: expected a number in [0, 1), got {rate}")
        if min_keep < 1:
            raise ValueError(f"expert dropout min_keep: expected an integer >= 1, got {min_keep}")
        self.rate = rate
        self.min_keep = min_keep
        self.generator = torch.Generator().manual_seed(seed)
        self.withheld = 0
        self.slots = 0
        self._last: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def attach(self, routers: Iterable[tuple[str, nn.Module]]) -> "ExpertDropout":
        for layer, router in routers:
            # prepend: runs before transformers' output recorder, which then records the masked logits.
            self._handles.append(router.register_forward_hook(self._hook(layer), prepend=True))
        return self

    def sample(self, tokens: int, experts: int, floor: int) -> torch.Tensor:
        """Boolean [tokens, experts] mask of withheld experts, at least ``floor`` kept per token."""
        draws = torch.rand(tokens, experts, generator=self.generator)
        withheld = draws < self.rate
        keep = torch.topk(draws, k=min(floor, experts), dim=-1).indices  # a uniform random subset
        return withheld.scatter_(1, keep, False)

    def _hook(self, layer: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: tuple) -> tuple | None:
            if not module.training or self.rate == 0:
                return None
            logits = output[0]
            if in_backward() and layer in self._last and self._last[layer].shape == logits.shape:
                withheld = self._last[layer]
            else:
                withheld = self.sample(logits.shape[0], logits.shape[1], max(self.min_keep, module.top_k))
                self.withheld += int(withheld.sum())  # counted on CPU: no device sync
                self.slots += withheld.numel()
                withheld = self._last[layer] = withheld.to(logits.device)
            masked = logits.masked_fill(withheld, torch.finfo(logits.dtype).min)
            weights, indices = route_from_logits(module, masked)
            return (masked, weights.to(output[1].dtype), indices, *output[3:])

        return hook

    @property
    def withheld_fraction(self) -> float | None:
        return self.withheld / self.slots if self.slots else None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._last.clear()


# --------------------------------------------------------------------------------------------------
# Load-balancing (aux) loss
# --------------------------------------------------------------------------------------------------


def load_balancing_loss(
    router_logits: tuple[torch.Tensor, ...], num_experts: int, top_k: int, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """transformers' Switch-Transformer load-balancing loss over every MoE layer.

    ``E · Σ_e f_e · P_e`` with f_e the fraction of top-k slots and P_e the mean router probability of
    expert e (padding excluded): ``top_k`` when routing is perfectly balanced, larger when it is not.
    """
    if attention_mask is not None and attention_mask.dim() != 2:
        attention_mask = None
    return load_balancing_loss_func(tuple(router_logits), num_experts, top_k, attention_mask)
