"""Resolve logical LoRA target names against a real model into a PEFT ``LoraConfig``.

Rules (reasons in docs/lora-targets.md):
- every target is scoped to the language model's decoder layers: the vision encoder and projector
  stay frozen (PEFT's suffix matching would otherwise also hit the vision attention);
- ``gate_proj`` / ``up_proj`` / ``down_proj`` mean the dense MLP and the shared experts; routed
  experts are added (PEFT ``target_parameters`` on the fused expert tensors) only on opt-in;
- the router (``gate`` / ``router``) is never a ``target_modules`` entry (PEFT cannot wrap a
  TopkRouter): LoRA goes through ``target_parameters`` on its weight, full training through
  ``modules_to_save``. Listed in both, LoRA wins and the user is warned;
- names that match nothing are reported, not silently dropped as PEFT does.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from deepsynth.models.configs import resolve_config
from deepsynth.models.families import (
    CAUSAL_LM,
    GROUPS,
    FamilyNames,
    family_names,
)
from deepsynth.training.errors import ConfigError
from deepsynth.training.lora_config import LoRAConfig

ROUTER_ALIASES = ("gate", "router")
MLP_NAMES = ("gate_proj", "up_proj", "down_proj")


@dataclass
class ResolvedTargets:
    """The outcome of resolving a LoRAConfig against one model."""

    family: str
    peft_config: LoraConfig
    # logical name → module/parameter names (relative to a decoder layer) it resolved to
    matched: dict[str, list[str]] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    router_mode: str | None = None  # "lora", "full" or None (frozen)
    # LoRA dropout applied to module targets; parameter targets (router, routed experts) get none.
    module_dropout: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        config = self.peft_config
        return {
            "family": self.family,
            "target_modules": config.target_modules if isinstance(config.target_modules, str)
            else sorted(config.target_modules or []),
            "target_parameters": list(config.target_parameters or []),
            "modules_to_save": list(config.modules_to_save or []),
            "matched": self.matched,
            "unmatched": self.unmatched,
            "warnings": self.warnings,
            "router_mode": self.router_mode,
            "module_dropout": self.module_dropout,
        }


def _is_linear(module: nn.Module) -> bool:
    # nn.Linear and quantized variants (bitsandbytes Linear4bit/Linear8bitLt subclass nn.Linear).
    return isinstance(module, nn.Linear)


def _layer_relative_names(model: nn.Module, names: FamilyNames) -> dict[str, list[str]]:
    """relative name inside a decoder layer → full module names, for every LM decoder-layer module."""
    pattern = re.compile("^" + names.layer_prefix + "(.+)$")
    found: dict[str, list[str]] = {}
    for full_name, _ in model.named_modules():
        match = pattern.match(full_name)
        if match:
            found.setdefault(match.group(1), []).append(full_name)
    return found


def resolve_targets(model: nn.Module, lora: LoRAConfig, family: str) -> ResolvedTargets:
    """Turn ``lora``'s logical names into a PEFT LoraConfig for ``model`` of ``family``."""
    names = family_names(family)
    modules = dict(model.named_modules())
    relative = _layer_relative_names(model, names)
    matched: dict[str, list[str]] = {}
    unmatched: list[str] = []
    warnings: list[str] = []
    module_targets: set[str] = set()  # relative names
    parameter_targets: set[str] = set()  # relative "<module>.<param>" names
    router = f"{names.mlp}.{names.router}" if names.router else None
    experts = f"{names.mlp}.{names.routed_experts}" if names.routed_experts else None

    router_lora = False
    for name in dict.fromkeys(lora.target_modules):  # keep order, drop duplicates
        hits: list[str] = []
        if name in ROUTER_ALIASES and router and router in relative:
            router_lora = True
            hits.append(f"{router}.weight")
            parameter_targets.add(f"{router}.weight")
        else:
            for rel, full_names in relative.items():
                if (rel == name or rel.endswith("." + name)) and _is_linear(modules[full_names[0]]):
                    if experts and rel.startswith(experts + "."):
                        continue  # per-expert Linear modules follow the routed-experts opt-in below
                    hits.append(rel)
                    module_targets.add(rel)
            if lora.include_routed_experts and experts and name in MLP_NAMES:
                hits.extend(_routed_expert_targets(name, experts, relative, modules, module_targets, parameter_targets))
        if hits:
            matched[name] = sorted(set(hits))
        else:
            unmatched.append(name)

    router_full = False
    save_modules: set[str] = set()
    for name in dict.fromkeys(lora.modules_to_save):
        if name in ROUTER_ALIASES and router and router in relative:
            router_full = True
            matched.setdefault(f"modules_to_save:{name}", [router])
            continue
        hits = [full for full in modules if (full == name or full.endswith("." + name))
                and not full.startswith(names.frozen_prefixes)]
        if hits:
            save_modules.update(hits)
            matched[f"modules_to_save:{name}"] = sorted(hits)[:3] + (["…"] if len(hits) > 3 else [])
        else:
            unmatched.append(f"modules_to_save:{name}")

    router_mode = None
    if router_lora:
        router_mode = "lora"
        if router_full:
            warnings.append(
                "the router is listed in both target_modules (LoRA) and modules_to_save (full training): "
                "using LoRA, which the seed recommends for small datasets; remove 'gate'/'router' from "
                "target_modules to train the router in full"
            )
    elif router_full:
        router_mode = "full"
        save_modules.update(relative[router])

    if unmatched:
        warnings.append(f"these target names match nothing in this {family} model and are ignored: {', '.join(unmatched)}")
    if not module_targets and not parameter_targets:
        available = sorted({rel.rsplit(".", 1)[-1] for rel, full in relative.items() if _is_linear(modules[full[0]])})
        raise ConfigError(
            "lora_target_modules", list(lora.target_modules),
            f"at least one name matching this model's language model; its linear layers are: {', '.join(available)}",
        )

    target_regex = None
    if module_targets:
        alternatives = "|".join(re.escape(rel) for rel in sorted(module_targets))
        target_regex = f"^{names.layer_prefix}({alternatives})$"
    target_parameters = sorted(
        full + "." + rel_param.rsplit(".", 1)[1]
        for rel_param in parameter_targets
        for full in relative[rel_param.rsplit(".", 1)[0]]
    )
    module_dropout = float(lora.dropout)
    if target_parameters and module_dropout:
        # PEFT cannot apply input dropout to parameter targets; we build the adapter with dropout 0
        # and put the dropout back on the module targets only (apply_lora).
        warnings.append(
            f"LoRA dropout {module_dropout} applies to module targets; router / routed-expert LoRA "
            "(PEFT target_parameters) is trained without input dropout"
        )
    peft_config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=0.0 if target_parameters else module_dropout,
        bias=lora.bias,
        target_modules=target_regex,
        target_parameters=target_parameters or None,
        modules_to_save=sorted(save_modules) or None,
        task_type="CAUSAL_LM" if family == CAUSAL_LM else None,
    )
    return ResolvedTargets(family, peft_config, matched, unmatched, warnings, router_mode, module_dropout)


def _routed_expert_targets(name, experts, relative, modules, module_targets, parameter_targets) -> list[str]:
    """Routed-expert targets for MLP name ``name``: fused 3-D tensors or per-expert Linear modules."""
    hits: list[str] = []
    fused = "gate_up_proj" if name in ("gate_proj", "up_proj") else "down_proj"
    experts_module = modules[relative[experts][0]] if experts in relative else None
    # A fused tensor held in 4/8 bits (deepsynth.models.quantization) is a parametrization, not a Parameter.
    if experts_module is not None and (nn.utils.parametrize.is_parametrized(experts_module, fused)
                                       or isinstance(getattr(experts_module, fused, None), nn.Parameter)):
        parameter_targets.add(f"{experts}.{fused}")
        hits.append(f"{experts}.{fused}")
    else:  # v1-style code with one nn.Linear per expert
        for rel, full_names in relative.items():
            if rel.startswith(experts + ".") and rel.endswith("." + name) and _is_linear(modules[full_names[0]]):
                module_targets.add(rel)
                hits.append(rel)
    return hits


def apply_lora(model: nn.Module, targets: ResolvedTargets) -> PeftModel:
    """Wrap ``model`` with the resolved LoRA adapter; module targets get the configured dropout."""
    from deepsynth.models.quantization import plain_fused_experts

    with plain_fused_experts(model):  # QLoRA: adapter names as on a full-precision base
        peft_model = get_peft_model(model, targets.peft_config)
    if targets.peft_config.lora_dropout != targets.module_dropout:
        from peft.tuners.lora.layer import LoraLayer, ParamWrapper

        for module in peft_model.modules():
            if isinstance(module, LoraLayer) and not isinstance(module, ParamWrapper):
                for adapter in module.lora_dropout:
                    module.lora_dropout[adapter] = nn.Dropout(p=targets.module_dropout)
    return peft_model


@dataclass
class ParamReport:
    """Exact trainable parameters of a LoRA setting on one model, split per group."""

    model: str
    family: str
    total_params: int
    trainable: int
    by_group: dict[str, int]
    targets: ResolvedTargets

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["targets"] = self.targets.to_dict()
        return data


def count_by_group(model: nn.Module, family: str) -> dict[str, int]:
    """Trainable parameters of ``model`` per group (attention, dense_mlp, shared/routed experts, router, other)."""
    names = family_names(family)
    counts = dict.fromkeys(GROUPS, 0)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            counts[names.group_of(name)] += parameter.numel()
    return counts


def count_trainable_params(model_name: str | None, lora: LoRAConfig) -> ParamReport:
    """Exact trainable-parameter counts of ``lora`` on ``model_name``, built on the meta device.

    No weights are loaded and nothing is downloaded for the embedded model, shipped architectures
    and local directories.
    """
    resolved = resolve_config(model_name)
    model = resolved.build_on_meta()
    names = family_names(resolved.family)
    total = sum(p.numel() for p in model.parameters())
    targets = resolve_targets(model, lora, resolved.family)
    if lora.enabled:
        model = apply_lora(model, targets)
    else:
        for full_name, parameter in model.named_parameters():
            parameter.requires_grad_(not full_name.startswith(names.frozen_prefixes))
    by_group = count_by_group(model, resolved.family)
    return ParamReport(resolved.name, resolved.family, total, sum(by_group.values()), by_group, targets)


def lora_params_of(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors of a PEFT model, by name (used to compare adapters)."""
    return {name: p for name, p in peft_model.named_parameters() if p.requires_grad}
