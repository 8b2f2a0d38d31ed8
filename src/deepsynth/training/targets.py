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

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from deepsynth.models.families import CAUSAL_LM, GROUPS, ROUTER_ALIASES, FamilyNames, family_names
from deepsynth.models.resolver import ResolvedConfig, resolve_config
from deepsynth.training.errors import ConfigError
from deepsynth.training.lora_config import AdapterSettings

MLP_NAMES = ("gate_proj", "up_proj", "down_proj")


@dataclass
class ResolvedTargets:
    """The outcome of resolving a AdapterSettings against one model."""

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


@dataclass
class _Layout:
    """What resolution needs to know about one model: its modules, by full and by layer-relative name."""

    names: FamilyNames
    modules: dict[str, nn.Module]
    relative: dict[str, list[str]]  # name inside a decoder layer → full names

    @classmethod
    def of(cls, model: nn.Module, family: str) -> _Layout:
        names = family_names(family)
        return cls(names, dict(model.named_modules()), _layer_relative_names(model, names))

    @property
    def router(self) -> str | None:
        """The router's name inside a decoder layer (``mlp.gate``), when this model has one."""
        names = self.names
        router = f"{names.mlp}.{names.router}" if names.router else None
        return router if router in self.relative else None

    @property
    def experts(self) -> str | None:
        return f"{self.names.mlp}.{self.names.routed_experts}" if self.names.routed_experts else None

    def is_linear(self, relative_name: str) -> bool:
        return _is_linear(self.modules[self.relative[relative_name][0]])


@dataclass
class _Found:
    """What the target names resolved to so far (module and parameter targets are layer-relative)."""

    matched: dict[str, list[str]] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    module_targets: set[str] = field(default_factory=set)
    parameter_targets: set[str] = field(default_factory=set)  # "<module>.<param>"
    save_modules: set[str] = field(default_factory=set)  # full names
    router_lora: bool = False
    router_full: bool = False


def resolve_targets(model: nn.Module, lora: AdapterSettings, family: str) -> ResolvedTargets:
    """Turn ``lora``'s logical names into a PEFT LoraConfig for ``model`` of ``family``."""
    layout = _Layout.of(model, family)
    found = _Found()
    for name in dict.fromkeys(lora.target_modules):  # keep order, drop duplicates
        _resolve_target(layout, lora, name, found)
    for name in dict.fromkeys(lora.modules_to_save):
        _resolve_module_to_save(layout, name, found)
    router_mode = _router_mode(layout, found)
    if found.unmatched:
        found.warnings.append(f"these target names match nothing in this {family} model and are ignored: "
                              f"{', '.join(found.unmatched)}")
    if not found.module_targets and not found.parameter_targets:
        available = sorted({rel.rsplit(".", 1)[-1] for rel in layout.relative if layout.is_linear(rel)})
        raise ConfigError(
            "lora_target_modules", list(lora.target_modules),
            f"at least one name matching this model's language model; its linear layers are: {', '.join(available)}",
        )
    peft_config = _peft_config(layout, lora, family, found)
    return ResolvedTargets(family, peft_config, found.matched, found.unmatched, found.warnings, router_mode,
                           float(lora.dropout))


def _resolve_target(layout: _Layout, lora: AdapterSettings, name: str, found: _Found) -> None:
    """One ``target_modules`` name: router LoRA (a parameter target), linear modules, routed experts on opt-in."""
    hits: list[str] = []
    router, experts = layout.router, layout.experts
    if name in ROUTER_ALIASES and router:
        found.router_lora = True
        hits.append(f"{router}.weight")
        found.parameter_targets.add(f"{router}.weight")
    else:
        for rel in layout.relative:
            if (rel == name or rel.endswith("." + name)) and layout.is_linear(rel):
                if experts and rel.startswith(experts + "."):
                    continue  # per-expert Linear modules follow the routed-experts opt-in below
                hits.append(rel)
                found.module_targets.add(rel)
        if lora.include_routed_experts and experts and name in MLP_NAMES:
            hits.extend(_routed_expert_targets(layout, name, found))
    if hits:
        found.matched[name] = sorted(set(hits))
    else:
        found.unmatched.append(name)


def _routed_expert_targets(layout: _Layout, name: str, found: _Found) -> list[str]:
    """Routed-expert targets for MLP name ``name``: fused 3-D tensors or per-expert Linear modules."""
    hits: list[str] = []
    experts = layout.experts
    fused = "gate_up_proj" if name in ("gate_proj", "up_proj") else "down_proj"
    experts_module = layout.modules[layout.relative[experts][0]] if experts in layout.relative else None
    if experts_module is not None and (nn.utils.parametrize.is_parametrized(experts_module, fused)
                                       or isinstance(getattr(experts_module, fused, None), nn.Parameter)):
        found.parameter_targets.add(f"{experts}.{fused}")
        hits.append(f"{experts}.{fused}")
    else:  # v1-style code with one nn.Linear per expert
        for rel in layout.relative:
            if rel.startswith(experts + ".") and rel.endswith("." + name) and layout.is_linear(rel):
                found.module_targets.add(rel)
                hits.append(rel)
    return hits


def _resolve_module_to_save(layout: _Layout, name: str, found: _Found) -> None:
    """One ``modules_to_save`` name: the router (full training), else modules outside the frozen vision side."""
    key = f"modules_to_save:{name}"
    if name in ROUTER_ALIASES and layout.router:
        found.router_full = True
        found.matched.setdefault(key, [layout.router])
        return
    hits = [full for full in layout.modules if (full == name or full.endswith("." + name))
            and not full.startswith(layout.names.frozen_prefixes)]
    if hits:
        found.save_modules.update(hits)
        found.matched[key] = sorted(hits)[:3] + (["…"] if len(hits) > 3 else [])
    else:
        found.unmatched.append(key)


def _router_mode(layout: _Layout, found: _Found) -> str | None:
    """How the router trains: ``"lora"``, ``"full"`` or None (frozen); listed both ways, LoRA wins (with a warning)."""
    if found.router_lora:
        if found.router_full:
            found.warnings.append(
                "the router is listed in both target_modules (LoRA) and modules_to_save (full training): "
                "using LoRA, which the seed recommends for small datasets; remove 'gate'/'router' from "
                "target_modules to train the router in full"
            )
        return "lora"
    if found.router_full:
        found.save_modules.update(layout.relative[layout.router])
        return "full"
    return None


def _peft_config(layout: _Layout, lora: AdapterSettings, family: str, found: _Found) -> LoraConfig:
    """PEFT's LoraConfig: module targets as one regex scoped to the decoder layers, parameter targets by full name."""
    target_regex = None
    if found.module_targets:
        alternatives = "|".join(re.escape(rel) for rel in sorted(found.module_targets))
        target_regex = f"^{layout.names.layer_prefix}({alternatives})$"
    target_parameters = sorted(
        full + "." + rel_param.rsplit(".", 1)[1]
        for rel_param in found.parameter_targets
        for full in layout.relative[rel_param.rsplit(".", 1)[0]]
    )
    module_dropout = float(lora.dropout)
    if target_parameters and module_dropout:
        # PEFT cannot apply input dropout to parameter targets; we build the adapter with dropout 0
        # and put the dropout back on the module targets only (apply_lora).
        found.warnings.append(
            f"LoRA dropout {module_dropout} applies to module targets; router / routed-expert LoRA "
            "(PEFT target_parameters) is trained without input dropout"
        )
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=0.0 if target_parameters else module_dropout,
        bias=lora.bias,
        target_modules=target_regex,
        target_parameters=target_parameters or None,
        modules_to_save=sorted(found.save_modules) or None,
        task_type="CAUSAL_LM" if family == CAUSAL_LM else None,
    )


def apply_lora(model: nn.Module, targets: ResolvedTargets) -> PeftModel:
    """Wrap ``model`` with the resolved LoRA adapter; module targets get the configured dropout."""
    from deepsynth.models.quantization.dequantize import plain_fused_experts

    with plain_fused_experts(model):  # QLoRA: adapter names as on a full-precision base
        peft_model = get_peft_model(model, targets.peft_config)
    if targets.peft_config.lora_dropout != targets.module_dropout:
        from peft.tuners.lora.layer import LoraLayer, ParamWrapper

        for module in peft_model.modules():
            if isinstance(module, LoraLayer) and not isinstance(module, ParamWrapper):
                for adapter in module.lora_dropout:
                    module.lora_dropout[adapter] = nn.Dropout(p=targets.module_dropout)
    return peft_model


def make_trainable(model: nn.Module, lora: AdapterSettings, targets: ResolvedTargets, family: str) -> nn.Module:
    """What a run trains, the one rule (the trainer and the estimates): LoRA on ``targets``, or with LoRA
    off every weight but the family's frozen path (the vision encoder), in full."""
    if lora.enabled:
        return apply_lora(model, targets)
    frozen = family_names(family).frozen_prefixes
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith(frozen))
    return model


@dataclass
class ParamReport:
    """Exact trainable parameters of a LoRA setting on one model, split per group."""

    model: str
    family: str
    total_params: int
    trainable: int
    by_group: dict[str, int]
    targets: ResolvedTargets
    # A QLoRA setting: what the loader holds in 4/8 bits (deepsynth.models.quantization.report.estimate_quantization).
    quantization: dict[str, Any] | None = None

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


def count_trainable_params(model_name: str | None, lora: AdapterSettings, *,
                           resolved: ResolvedConfig | None = None) -> ParamReport:
    """Exact trainable-parameter counts of ``lora`` on ``model_name``, built on the meta device.

    No weights are loaded and nothing is downloaded for the embedded model, shipped architectures
    and local directories. ``resolved``: ``model_name`` as the caller already resolved it (the run plan).
    """
    resolved = resolved if resolved is not None else resolve_config(model_name)
    model = resolved.build_on_meta()
    total = sum(p.numel() for p in model.parameters())
    quantized = None
    if lora.quantization:  # counted on the plain model, as the loader quantizes it
        from deepsynth.models.quantization.report import estimate_quantization

        quantized = estimate_quantization(model, resolved.family, lora.quantization)
    targets = resolve_targets(model, lora, resolved.family)
    model = make_trainable(model, lora, targets, resolved.family)
    by_group = count_by_group(model, resolved.family)
    return ParamReport(resolved.name, resolved.family, total, sum(by_group.values()), by_group, targets, quantized)
