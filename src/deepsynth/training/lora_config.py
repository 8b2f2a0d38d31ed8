"""LoRA settings and the named presets (the one source of presets for CLI, API and UI).

Target names are *logical*: ``q_proj`` … ``o_proj`` (attention), ``gate_proj`` / ``up_proj`` /
``down_proj`` (dense MLP and shared experts), ``gate`` / ``router`` (the MoE router). They are resolved
against the real model by :mod:`deepsynth.training.targets`. Routed experts are adapted only when
``include_routed_experts`` is set: with them, the seed's parameter budgets grow 7–19×.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from deepsynth.training.errors import ConfigError

ATTENTION_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP_TARGETS = ["gate_proj", "up_proj", "down_proj"]
ROUTER_TARGETS = ["router", "gate"]
BIAS_CHOICES = ("none", "all", "lora_only")
QUANTIZATION_CHOICES = (None, "4bit", "8bit")


@dataclass
class LoRAConfig:
    """LoRA settings of one run. ``to_dict``/``from_dict`` round-trip exactly."""

    enabled: bool = True
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(ATTENTION_TARGETS))
    # Names listed here are trained in full (PEFT modules_to_save), e.g. ["gate"] for the router.
    modules_to_save: list[str] = field(default_factory=list)
    bias: str = "none"
    # Opt-in: MLP names also adapt every routed expert (PEFT target_parameters on the fused tensors).
    include_routed_experts: bool = False
    # QLoRA presets: base weights held in 4/8 bits by bitsandbytes (deepsynth.models.quantization).
    quantization: str | None = None

    def __post_init__(self) -> None:
        self.target_modules = list(self.target_modules or [])
        self.modules_to_save = list(self.modules_to_save or [])
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field and its accepted range."""
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ConfigError("lora rank", self.rank, "an integer > 0")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ConfigError("lora alpha", self.alpha, "a number > 0")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError("lora dropout", self.dropout, "a number in [0, 1)")
        if self.bias not in BIAS_CHOICES:
            raise ConfigError("lora bias", self.bias, f"one of {', '.join(BIAS_CHOICES)}")
        if self.quantization not in QUANTIZATION_CHOICES:
            raise ConfigError("lora quantization", self.quantization, "null, '4bit' or '8bit'")
        for name in (*self.target_modules, *self.modules_to_save):
            if not isinstance(name, str) or not name.strip():
                raise ConfigError("lora target_modules", name, "non-empty module names")
        if self.enabled and not self.target_modules and not self.modules_to_save:
            raise ConfigError("lora target_modules", self.target_modules, "at least one target when LoRA is enabled")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoRAConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError("lora config", unknown, f"only the fields {', '.join(sorted(known))}")
        return cls(**copy.deepcopy(data))


LORA_PRESETS: dict[str, LoRAConfig] = {
    # Legacy presets (upstream DeepSynth).
    "minimal": LoRAConfig(rank=4, alpha=8, dropout=0.05, target_modules=["q_proj", "v_proj"]),
    "standard": LoRAConfig(rank=16, alpha=32, dropout=0.05, target_modules=list(ATTENTION_TARGETS)),
    "high_capacity": LoRAConfig(rank=64, alpha=128, dropout=0.05, target_modules=ATTENTION_TARGETS + MLP_TARGETS),
    "qlora_4bit": LoRAConfig(rank=16, alpha=32, dropout=0.05, target_modules=list(ATTENTION_TARGETS), quantization="4bit"),
    "qlora_8bit": LoRAConfig(rank=16, alpha=32, dropout=0.05, target_modules=list(ATTENTION_TARGETS), quantization="8bit"),
    # The seed's presets for tiny datasets, at its rank / alpha / dropout / targets.
    "tiny_data": LoRAConfig(rank=16, alpha=32, dropout=0.1, target_modules=ATTENTION_TARGETS + ["down_proj"]),
    "balanced": LoRAConfig(rank=32, alpha=64, dropout=0.08, target_modules=ATTENTION_TARGETS + MLP_TARGETS),
    "router_focused": LoRAConfig(
        rank=16, alpha=32, dropout=0.08,
        target_modules=ATTENTION_TARGETS + ["down_proj"] + ROUTER_TARGETS,
        # The seed lists full training as the alternative; with the router in both lists LoRA wins
        # (see targets.resolve_targets), and the user is told.
        modules_to_save=list(ROUTER_TARGETS),
    ),
    "high_capacity_moe": LoRAConfig(
        rank=64, alpha=128, dropout=0.05, target_modules=ATTENTION_TARGETS + MLP_TARGETS + ROUTER_TARGETS
    ),
}

PRESET_DESCRIPTIONS: dict[str, str] = {
    "minimal": "Legacy: q/v attention only, rank 4.",
    "standard": "Legacy default: attention q/k/v/o, rank 16.",
    "high_capacity": "Legacy: attention + MLP, rank 64.",
    "qlora_4bit": "Legacy: attention, rank 16, base weights in 4-bit NF4 (bitsandbytes; CPU or GPU).",
    "qlora_8bit": "Legacy: attention, rank 16, base weights in 8-bit (bitsandbytes; CPU or GPU).",
    "tiny_data": "3-10 samples: attention + down_proj, rank 16, dropout 0.1.",
    "balanced": "10-50 samples: attention + full MLP, rank 32.",
    "router_focused": "Domain shift on MoE: attention + down_proj + router LoRA, rank 16.",
    "high_capacity_moe": "50+ samples: attention + MLP + router, rank 64.",
}


def get_lora_preset(name: str) -> LoRAConfig:
    """Return an independent copy of preset ``name``; unknown names raise ConfigError listing them."""
    try:
        preset = LORA_PRESETS[name]
    except KeyError:
        raise ConfigError("preset", name, f"one of {', '.join(LORA_PRESETS)}") from None
    return copy.deepcopy(preset)
