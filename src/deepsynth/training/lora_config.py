"""LoRA settings: the one shape (:class:`AdapterSettings`), its one set of defaults, and the named presets.

``TrainerConfig`` stores the same settings as flat fields (``use_lora``, ``lora_rank``…, the design
guide's keyword arguments, also the keys of YAML files and the web form); :data:`FLAT_FIELDS` is the
one table between the two spellings and :func:`adapter_settings` the one way to build settings from a
preset and overrides. The class is not called ``LoraConfig``: that is peft's, which
:mod:`deepsynth.training.targets` builds from these settings once the targets are resolved.

Target names are *logical*: ``q_proj`` … ``o_proj`` (attention), ``gate_proj`` / ``up_proj`` /
``down_proj`` (dense MLP and shared experts), ``gate`` / ``router`` (the MoE router). They are resolved
against the real model by :mod:`deepsynth.training.targets`. Routed experts are adapted only when
``include_routed_experts`` is set: with them, the seed's parameter budgets grow 7–19×.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from deepsynth.errors import ConfigError

ATTENTION_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP_TARGETS = ["gate_proj", "up_proj", "down_proj"]
ROUTER_TARGETS = ["router", "gate"]
BIAS_CHOICES = ("none", "all", "lora_only")
QUANTIZATION_CHOICES = (None, "4bit", "8bit")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class AdapterSettings:
    """LoRA settings of one run. ``to_dict``/``from_dict`` round-trip exactly.

    The defaults are the run defaults of ``TrainerConfig`` (the seed's tiny-data recommendation:
    rank 32, alpha 64, dropout 0.08, attention + down_proj); the presets set every value themselves.
    """

    enabled: bool = True
    rank: int = 32
    alpha: int = 64
    dropout: float = 0.08
    target_modules: list[str] = field(default_factory=lambda: [*ATTENTION_TARGETS, "down_proj"])
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
        """Raise ConfigError naming the first invalid field (by its name here) and its accepted range."""
        if not isinstance(self.enabled, bool):
            raise ConfigError("enabled", self.enabled, "true or false")
        if not _is_int(self.rank) or self.rank <= 0:
            raise ConfigError("rank", self.rank, "an integer > 0")
        if not _is_number(self.alpha) or self.alpha <= 0:
            raise ConfigError("alpha", self.alpha, "a number > 0")
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ConfigError("dropout", self.dropout, "a number in [0, 1)")
        if self.bias not in BIAS_CHOICES:
            raise ConfigError("bias", self.bias, f"one of {', '.join(BIAS_CHOICES)}")
        if self.quantization not in QUANTIZATION_CHOICES:
            raise ConfigError("quantization", self.quantization, "null, '4bit' or '8bit'")
        for name in ("target_modules", "modules_to_save"):
            for module in getattr(self, name):
                if not isinstance(module, str) or not module.strip():
                    raise ConfigError(name, module, "non-empty module names")
        if self.enabled and not self.target_modules and not self.modules_to_save:
            raise ConfigError("target_modules", self.target_modules, "at least one target when LoRA is enabled")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AdapterSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError("lora settings", unknown, f"only the fields {', '.join(sorted(known))}")
        return cls(**copy.deepcopy(dict(data)))

    # --- the flat spelling of TrainerConfig -----------------------------------------------------

    def to_flat(self) -> dict[str, Any]:
        """These settings as TrainerConfig's flat fields (``lora_rank``…)."""
        return {flat: copy.deepcopy(getattr(self, name)) for flat, name in FLAT_FIELDS.items()}

    @classmethod
    def from_flat(cls, data: Mapping[str, Any]) -> "AdapterSettings":
        """Settings from TrainerConfig's flat fields; errors name the flat field (``lora_rank``)."""
        values = {name: data[flat] for flat, name in FLAT_FIELDS.items() if flat in data}
        try:
            return cls.from_dict(values)
        except ConfigError as error:
            raise ConfigError(FLAT_NAMES.get(error.field, error.field), error.value, error.expected) from None


#: TrainerConfig's flat field → AdapterSettings field: the one correspondence between the two spellings.
FLAT_FIELDS: dict[str, str] = {
    "use_lora": "enabled",
    "lora_rank": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "lora_target_modules": "target_modules",
    "lora_modules_to_save": "modules_to_save",
    "lora_bias": "bias",
    "lora_include_routed_experts": "include_routed_experts",
    "lora_quantization": "quantization",
}
FLAT_NAMES: dict[str, str] = {name: flat for flat, name in FLAT_FIELDS.items()}
#: The one set of defaults (TrainerConfig's flat fields read theirs from here).
DEFAULT_ADAPTER = AdapterSettings()

LORA_PRESETS: dict[str, AdapterSettings] = {
    # Legacy presets (upstream DeepSynth).
    "minimal": AdapterSettings(rank=4, alpha=8, dropout=0.05, target_modules=["q_proj", "v_proj"]),
    "standard": AdapterSettings(rank=16, alpha=32, dropout=0.05, target_modules=list(ATTENTION_TARGETS)),
    "high_capacity": AdapterSettings(rank=64, alpha=128, dropout=0.05, target_modules=ATTENTION_TARGETS + MLP_TARGETS),
    "qlora_4bit": AdapterSettings(rank=16, alpha=32, dropout=0.05, target_modules=list(ATTENTION_TARGETS), quantization="4bit"),
    "qlora_8bit": AdapterSettings(rank=16, alpha=32, dropout=0.05, target_modules=list(ATTENTION_TARGETS), quantization="8bit"),
    # The seed's presets for tiny datasets, at its rank / alpha / dropout / targets.
    "tiny_data": AdapterSettings(rank=16, alpha=32, dropout=0.1, target_modules=ATTENTION_TARGETS + ["down_proj"]),
    "balanced": AdapterSettings(rank=32, alpha=64, dropout=0.08, target_modules=ATTENTION_TARGETS + MLP_TARGETS),
    "router_focused": AdapterSettings(
        rank=16, alpha=32, dropout=0.08,
        target_modules=ATTENTION_TARGETS + ["down_proj"] + ROUTER_TARGETS,
        # The seed lists full training as the alternative; with the router in both lists LoRA wins
        # (see targets.resolve_targets), and the user is told.
        modules_to_save=list(ROUTER_TARGETS),
    ),
    "high_capacity_moe": AdapterSettings(
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


def get_lora_preset(name: str) -> AdapterSettings:
    """Return an independent copy of preset ``name``; unknown names raise ConfigError listing them."""
    try:
        preset = LORA_PRESETS[name]
    except KeyError:
        raise ConfigError("preset", name, f"one of {', '.join(LORA_PRESETS)}") from None
    return copy.deepcopy(preset)


def adapter_settings(preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> AdapterSettings:
    """The one way to LoRA settings: preset ``preset`` (None: :data:`DEFAULT_ADAPTER`), then ``overrides``.

    ``overrides`` uses AdapterSettings names (``rank``, ``target_modules``…), as the web API's
    estimate does; errors name the field. TrainerConfig's flat fields go through
    :meth:`AdapterSettings.from_flat`.
    """
    base = get_lora_preset(preset) if preset is not None else copy.deepcopy(DEFAULT_ADAPTER)
    return AdapterSettings.from_dict({**base.to_dict(), **dict(overrides or {})})
