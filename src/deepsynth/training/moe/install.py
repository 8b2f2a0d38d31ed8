"""What a training run installs on an MoE model: the regularisers and the telemetry, and their report.

:func:`install_moe` finds the routers (:mod:`~deepsynth.training.moe.routers`), attaches the knobs
the config asks for (:mod:`~deepsynth.training.moe.regularisers`) and the expert-utilization
counters (:mod:`~deepsynth.training.moe.telemetry`), and says loudly which knob cannot act on this
model; :class:`MoeRegularisation` holds them and reports them to metrics.json.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from deepsynth.models.families import ROUTER_ALIASES
from deepsynth.training.moe.regularisers import (
    EXPERT_DROPOUT_SEED_OFFSET,
    GATE_DROPOUT_SEED_OFFSET,
    ExpertDropout,
    GateDropout,
    load_balancing_loss,
    resolve_gate_dropout,
)
from deepsynth.training.moe.routers import find_routers, router_parameters
from deepsynth.training.moe.telemetry import ExpertUtilization

LOGGER = logging.getLogger("deepsynth")


@dataclass
class MoeRegularisation:
    """The MoE knobs of one run, installed on the model; ``report()`` feeds metrics.json."""

    family: str
    router_mode: str | None = None
    gate_dropout: GateDropout | None = None
    gate_dropout_rate: float = 0.0
    gate_dropout_parameters: list[str] = field(default_factory=list)
    expert_dropout: ExpertDropout | None = None
    expert_dropout_rate: float = 0.0
    expert_dropout_min_keep: int = 1
    aux_loss_coef: float = 0.0
    num_experts: int | None = None
    top_k: int | None = None
    utilization: ExpertUtilization | None = None
    warnings: list[str] = field(default_factory=list)
    aux_losses: list[float] = field(default_factory=list)

    @property
    def is_moe(self) -> bool:
        return self.num_experts is not None

    @property
    def aux_loss_active(self) -> bool:
        return self.is_moe and self.aux_loss_coef > 0

    def aux_loss(self, outputs: Any, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        logits = getattr(outputs, "router_logits", None)
        if not logits:
            return None
        return load_balancing_loss(logits, self.num_experts, self.top_k, attention_mask)

    def report(self) -> dict[str, Any]:
        """``{"moe": {...knobs, whether each acted, measured rates...}, "expert_utilization": {...}}``."""
        moe = {
            "router_mode": self.router_mode,
            "gate_dropout_rate": self.gate_dropout_rate,
            "gate_dropout_active": self.gate_dropout is not None,
            "gate_dropout_tensors": len(self.gate_dropout_parameters),
            "gate_dropout_dropped_fraction": self.gate_dropout.dropped_fraction if self.gate_dropout else None,
            "expert_dropout_rate": self.expert_dropout_rate,
            "expert_dropout_min_keep": self.expert_dropout_min_keep,
            "expert_dropout_active": self.expert_dropout is not None,
            "expert_dropout_withheld_fraction": self.expert_dropout.withheld_fraction if self.expert_dropout else None,
            "router_aux_loss_coef": self.aux_loss_coef,
            "aux_loss_active": self.aux_loss_active,
            "aux_loss_mean": sum(self.aux_losses) / len(self.aux_losses) if self.aux_losses else None,
            "aux_loss_last": self.aux_losses[-1] if self.aux_losses else None,
            "warnings": self.warnings,
        }
        return {"moe": moe, "expert_utilization": self.utilization.report() if self.utilization else None}

    def remove(self) -> None:
        for part in (self.gate_dropout, self.expert_dropout, self.utilization):
            if part is not None:
                part.remove()


def install_moe(
    model: nn.Module,
    family: str,
    *,
    gate_dropout_rate: float = 0.0,
    gate_dropout_keywords: Iterable[str] = ROUTER_ALIASES,
    expert_dropout_rate: float = 0.0,
    expert_dropout_min_keep: int = 1,
    router_aux_loss_coef: float = 0.0,
    seed: int = 0,
    router_mode: str | None = None,
    telemetry: bool = True,
) -> MoeRegularisation:
    """Install the MoE knobs and telemetry on ``model`` (PEFT-wrapped or not); log what is inactive."""
    routers = find_routers(model, family)
    moe = MoeRegularisation(family, router_mode=router_mode, gate_dropout_rate=gate_dropout_rate,
                            expert_dropout_rate=expert_dropout_rate, expert_dropout_min_keep=expert_dropout_min_keep,
                            aux_loss_coef=router_aux_loss_coef)
    if routers:
        moe.num_experts, moe.top_k = routers[0][1].num_experts, routers[0][1].top_k
    if gate_dropout_rate > 0:
        _install_gate_dropout(moe, model, routers, gate_dropout_keywords, seed)
    if expert_dropout_rate > 0:
        _install_expert_dropout(moe, routers, seed)
    if router_aux_loss_coef > 0 and not routers:
        moe.warnings.append(f"the router aux loss is INACTIVE (router_aux_loss_coef {router_aux_loss_coef}): "
                            f"{_no_router(family)}")
    if telemetry and routers:
        moe.utilization = ExpertUtilization().attach(model, routers)
    for warning in moe.warnings:
        LOGGER.warning("MoE: %s", warning)
    return moe


def _no_router(family: str) -> str:
    return f"this {family} model has no MoE router"


def _install_gate_dropout(moe: MoeRegularisation, model: nn.Module, routers: list, keywords: Iterable[str],
                          seed: int) -> None:
    parameters, notes = resolve_gate_dropout(model, moe.family, keywords)
    moe.warnings.extend(notes)
    if parameters:
        dropout = GateDropout(moe.gate_dropout_rate, seed + GATE_DROPOUT_SEED_OFFSET)
        moe.gate_dropout = dropout.attach(parameters.values())
        moe.gate_dropout_parameters = sorted(parameters)
        return
    if not routers:
        reason = _no_router(moe.family)
    elif router_parameters(model, moe.family):
        reason = "gate_dropout_keywords name no router"
    else:
        reason = ("the router is frozen (no trainable router tensor); train it with router LoRA (preset "
                  "router_focused, or 'gate' in lora_target_modules) or in full (lora_modules_to_save: ['gate'])")
    moe.warnings.append(f"gate dropout is INACTIVE (gate_dropout_rate {moe.gate_dropout_rate}): {reason}")


def _install_expert_dropout(moe: MoeRegularisation, routers: list, seed: int) -> None:
    if not routers:
        moe.warnings.append(f"expert dropout is INACTIVE (expert_dropout_rate {moe.expert_dropout_rate}): "
                            f"{_no_router(moe.family)}")
        return
    moe.expert_dropout = ExpertDropout(moe.expert_dropout_rate, moe.expert_dropout_min_keep,
                                       seed + EXPERT_DROPOUT_SEED_OFFSET).attach(routers)
    if moe.top_k and moe.expert_dropout_min_keep < moe.top_k:
        LOGGER.info("expert dropout keeps at least top_k = %d experts per token (min_keep %d is lower)",
                    moe.top_k, moe.expert_dropout_min_keep)
