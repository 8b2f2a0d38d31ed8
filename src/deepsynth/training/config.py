"""Training settings: ``OptimizerConfig`` and ``TrainerConfig`` (the one config type of a run).

A config round-trips exactly through ``to_dict``/``from_dict``, JSON and YAML. The Hub token is
held in memory only: it is excluded from ``to_dict``, ``repr`` and every file written from a config.
"""

from __future__ import annotations

import copy
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from deepsynth.training.errors import ConfigError
from deepsynth.training.lora_config import LORA_PRESETS, LoRAConfig, get_lora_preset

SCHEDULER_TYPES = ("cosine", "linear", "constant", "none")
DTYPES = (None, "float32", "bfloat16", "float16")
# Fields never serialised.
SECRET_FIELDS = ("hub_token",)


def _preset_fields(name: str) -> dict[str, Any]:
    """TrainerConfig LoRA fields of preset ``name``."""
    preset = get_lora_preset(name)
    return dict(
        use_lora=preset.enabled, lora_rank=preset.rank, lora_alpha=preset.alpha, lora_dropout=preset.dropout,
        lora_target_modules=preset.target_modules, lora_modules_to_save=preset.modules_to_save,
        lora_bias=preset.bias, lora_include_routed_experts=preset.include_routed_experts,
        lora_quantization=preset.quantization,
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_value_kinds(data: dict[str, Any]) -> None:
    """Refuse values of the wrong *kind* for a field, naming it (ConfigError).

    TrainerConfig checks ranges and numbers itself; from JSON it also needs strings to be strings,
    lists to be lists (``list("q_proj")`` would silently become single letters) and booleans to be
    booleans (``"false"`` is truthy). The kinds come from TrainerConfig's own type hints.
    """
    hints = {**typing.get_type_hints(TrainerConfig), **typing.get_type_hints(OptimizerConfig)}
    if "optimizer" in data:
        optimizer = data["optimizer"]
        if not isinstance(optimizer, dict):
            raise ConfigError("optimizer", optimizer, "an object of optimizer fields "
                              f"({', '.join(f.name for f in fields(OptimizerConfig))})")
        unknown = sorted(set(optimizer) - {f.name for f in fields(OptimizerConfig)})
        if unknown:
            raise ConfigError("optimizer", unknown, f"only {', '.join(f.name for f in fields(OptimizerConfig))}")
        check_value_kinds(dict(optimizer))
    for name, value in data.items():
        hint = hints.get(name)
        if hint is None or name == "optimizer":
            continue
        kinds = {typing.get_origin(arg) or arg for arg in (typing.get_args(hint) if typing.get_origin(hint) in
                                                             (typing.Union, types.UnionType) else (hint,))}
        if value is None:
            if type(None) not in kinds:
                raise ConfigError(name, value, f"a value (not null) of type {_kind_name(kinds)}")
            continue
        if bool in kinds and not isinstance(value, bool):
            raise ConfigError(name, value, "true or false")
        if kinds & {list, tuple} and not (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
            raise ConfigError(name, value, "a list of names (strings)")
        if dict in kinds and not isinstance(value, dict):
            raise ConfigError(name, value, "a JSON object")
        if kinds == {str, type(None)} or kinds == {str}:
            if not isinstance(value, str):
                raise ConfigError(name, value, "a string" + (" or null" if type(None) in kinds else ""))


def _kind_name(kinds: set) -> str:
    return " or ".join(sorted(getattr(k, "__name__", str(k)) for k in kinds if k is not type(None)))


@dataclass
class OptimizerConfig:
    """AdamW settings and the learning-rate schedule.

    Warmup is counted in optimizer updates. Give ``warmup_steps`` or ``warmup_ratio`` (not both);
    with neither, 10% of the updates warm up. Warmup is always bounded by the run's length.
    """

    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_steps: int | None = None
    warmup_ratio: float | None = None
    scheduler_type: str = "cosine"

    DEFAULT_WARMUP_RATIO = 0.1

    def __post_init__(self) -> None:
        if not _is_number(self.learning_rate) or self.learning_rate <= 0:
            raise ConfigError("learning_rate", self.learning_rate, "a number > 0")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError("weight_decay", self.weight_decay, "a number >= 0")
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ConfigError("warmup_steps", self.warmup_steps, "warmup_steps or warmup_ratio, not both")
        if self.warmup_steps is not None and (not _is_int(self.warmup_steps) or self.warmup_steps < 0):
            raise ConfigError("warmup_steps", self.warmup_steps, "an integer >= 0")
        if self.warmup_ratio is not None and (not _is_number(self.warmup_ratio) or not 0 <= self.warmup_ratio < 1):
            raise ConfigError("warmup_ratio", self.warmup_ratio, "a number in [0, 1)")
        if self.scheduler_type not in SCHEDULER_TYPES:
            raise ConfigError("scheduler_type", self.scheduler_type, f"one of {', '.join(SCHEDULER_TYPES)}")

    def resolve_warmup(self, total_updates: int) -> int:
        """Warmup updates for a run of ``total_updates``: always < total_updates (0 for a 1-update run).

        ``scheduler_type: none`` means a constant learning rate from the first update: no warmup.
        """
        if self.scheduler_type == "none":
            return 0
        if self.warmup_steps is not None:
            wanted = self.warmup_steps
        else:
            ratio = self.DEFAULT_WARMUP_RATIO if self.warmup_ratio is None else self.warmup_ratio
            wanted = math.ceil(ratio * total_updates)
        return max(0, min(wanted, total_updates - 1))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class TrainerConfig:
    """Every setting of one fine-tuning run.

    Defaults follow the seed's recommended tiny-data configuration (batch 1, accumulation 16,
    rank 32, attention + down_proj). ``deepsynth recommend`` / ``--auto`` picks settings by dataset size.
    """

    model_name: str | None = None  # None: the embedded tiny DeepSeek-OCR-2 model
    output_dir: str = "outputs/deepsynth-run"
    preset: str | None = None  # label of the preset the LoRA fields came from, if any

    batch_size: int = 1
    num_epochs: int = 200
    gradient_accumulation_steps: int = 16
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    use_lora: bool = True
    lora_rank: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.08
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
    )
    lora_modules_to_save: list[str] | None = None
    lora_bias: str = "none"
    lora_include_routed_experts: bool = False
    # "4bit" / "8bit": QLoRA — base weights held in 4/8 bits by bitsandbytes (extra [qlora]), CPU or GPU;
    # metrics.json "quantization" says which fraction of the base (deepsynth.models.quantization).
    lora_quantization: str | None = None

    # MoE regularisation (see deepsynth.training.moe and docs/moe.md).
    # gate_dropout_rate: dropout on the gradient of the trainable router tensors (router LoRA or full
    # copy); inactive, with a warning, when the router is frozen. Keywords only ever select the router.
    gate_dropout_rate: float = 0.0
    gate_dropout_keywords: tuple[str, ...] = ("gate", "router")
    # expert_dropout_rate: in training forwards, each routed expert is withheld per token with this
    # probability; at least max(expert_dropout_min_keep, top_k) experts stay selectable.
    expert_dropout_rate: float = 0.0
    expert_dropout_min_keep: int = 1
    # router_aux_loss_coef: weight of the load-balancing loss on the router logits (0 = off).
    router_aux_loss_coef: float = 0.0

    # Data (deepsynth.data): None = the bundled French samples (train / eval splits).
    data_path: str | None = None
    eval_data_path: str | None = None
    column_mapping: dict[str, str] | None = None
    instruction: str | None = None  # None: the summarisation instruction of deepsynth.data.collate
    max_length: int = 512
    # Without eval data (no eval file, no 'eval' split), hold this many training samples out for
    # evaluation and early stopping, chosen with ``seed``; they are never trained on. None: no hold-out
    # (the metrics are then on the training samples, and say so). Ignored when eval data is given.
    # ``recommend(..., has_eval_data=False)`` / ``--auto`` set it (deepsynth.training.recommend.holdout_size).
    holdout_samples: int | None = None

    # Run control.
    seed: int = 42
    dtype: str | None = None  # None: bf16 on GPUs that support it, fp32 on CPU
    gradient_checkpointing: bool = False
    # Encode each unique page once when the vision path is frozen (deepsynth.training.feature_cache);
    # false forces per-step encoding. Exact: tests compare losses with and without.
    use_feature_cache: bool = True
    save_total_limit: int = 2
    checkpoint_every_updates: int | None = None  # None: about 5 checkpoints per run
    resume_from_checkpoint: str | None = "auto"  # "auto": latest in output_dir if any; "never"; or a path
    eval_every_updates: int | None = None  # held-out loss during training; needed by early stopping
    early_stopping_patience: int | None = None

    # Generation for before/after metrics.
    max_new_tokens: int = 96
    no_repeat_ngram_size: int = 6  # repetition guard: OCR-family models loop without it

    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool = False
    hub_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.optimizer, dict):
            self.optimizer = OptimizerConfig(**self.optimizer)
        if not isinstance(self.optimizer, OptimizerConfig):
            raise ConfigError("optimizer", self.optimizer, "an OptimizerConfig or a dict of its fields")
        self.lora_target_modules = None if self.lora_target_modules is None else list(self.lora_target_modules)
        self.lora_modules_to_save = None if self.lora_modules_to_save is None else list(self.lora_modules_to_save)
        self.gate_dropout_keywords = tuple(self.gate_dropout_keywords)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field and its accepted range."""
        for name in ("batch_size", "num_epochs", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ConfigError(name, value, "an integer > 0")
        for name in ("max_train_samples", "max_eval_samples", "holdout_samples"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value <= 0):
                raise ConfigError(name, value, "null or an integer > 0")
        if not _is_int(self.lora_rank) or self.lora_rank <= 0:
            raise ConfigError("lora_rank", self.lora_rank, "an integer > 0")
        if not _is_number(self.lora_alpha) or self.lora_alpha <= 0:
            raise ConfigError("lora_alpha", self.lora_alpha, "a number > 0")
        if not _is_number(self.lora_dropout) or not 0 <= self.lora_dropout < 1:
            raise ConfigError("lora_dropout", self.lora_dropout, "a number in [0, 1)")
        for name in ("gate_dropout_rate", "expert_dropout_rate"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < 1:
                raise ConfigError(name, value, "a number in [0, 1)")
        if not _is_int(self.expert_dropout_min_keep) or self.expert_dropout_min_keep < 1:
            raise ConfigError("expert_dropout_min_keep", self.expert_dropout_min_keep, "an integer >= 1")
        if not _is_number(self.router_aux_loss_coef) or self.router_aux_loss_coef < 0:
            raise ConfigError("router_aux_loss_coef", self.router_aux_loss_coef, "a number >= 0 (0 disables)")
        for name in ("max_length", "save_total_limit", "max_new_tokens"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ConfigError(name, value, "an integer > 0")
        for name in ("checkpoint_every_updates", "eval_every_updates", "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value <= 0):
                raise ConfigError(name, value, "null or an integer > 0")
        if not _is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            raise ConfigError("no_repeat_ngram_size", self.no_repeat_ngram_size, "an integer >= 0 (0 disables)")
        if not _is_int(self.seed):
            raise ConfigError("seed", self.seed, "an integer")
        if self.dtype not in DTYPES:
            raise ConfigError("dtype", self.dtype, "null (auto), 'float32', 'bfloat16' or 'float16'")
        if self.early_stopping_patience is not None and self.eval_every_updates is None:
            raise ConfigError("eval_every_updates", None, "an integer > 0 when early_stopping_patience is set")
        if self.column_mapping is not None and not (
            isinstance(self.column_mapping, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in self.column_mapping.items())
        ):
            raise ConfigError("column_mapping", self.column_mapping, "a mapping of canonical column to your column")
        if self.preset is not None and self.preset not in LORA_PRESETS:
            raise ConfigError("preset", self.preset, f"null or one of {', '.join(LORA_PRESETS)}")
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("hub_model_id", self.hub_model_id, "a repo id (org/name) when push_to_hub is true")
        if self.lora_quantization is not None and not self.use_lora:
            raise ConfigError("lora_quantization", self.lora_quantization,
                              "null when use_lora is false (a 4/8-bit base is frozen: QLoRA trains LoRA adapters)")
        if self.use_lora:
            try:
                self.lora_config()
            except ConfigError as error:
                raise ConfigError(f"lora_{error.field.removeprefix('lora ')}", error.value, error.expected) from None

    def lora_config(self) -> LoRAConfig:
        """The LoRA settings of this run as a LoRAConfig."""
        return LoRAConfig(
            enabled=self.use_lora,
            rank=self.lora_rank,
            alpha=self.lora_alpha,
            dropout=self.lora_dropout,
            target_modules=list(self.lora_target_modules or []),
            modules_to_save=list(self.lora_modules_to_save or []),
            bias=self.lora_bias,
            include_routed_experts=self.lora_include_routed_experts,
            quantization=self.lora_quantization,
        )

    def with_preset(self, name: str) -> "TrainerConfig":
        """A copy whose LoRA fields come from preset ``name``."""
        data = self.to_dict()
        data.update(preset=name, **_preset_fields(name))
        return TrainerConfig.from_dict(data, hub_token=self.hub_token)

    # --- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-safe dict of every field except the Hub token."""
        data: dict[str, Any] = {}
        for f in fields(self):
            if f.name in SECRET_FIELDS:
                continue
            value = getattr(self, f.name)
            if isinstance(value, OptimizerConfig):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            data[f.name] = copy.deepcopy(value)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, hub_token: str | None = None) -> "TrainerConfig":
        """Build from ``to_dict`` output. Optimizer fields may also be given flat (``learning_rate``…)."""
        if not isinstance(data, dict):
            raise ConfigError("config", type(data).__name__, "a mapping of field names to values")
        data = copy.deepcopy(data)
        if isinstance(data.get("optimizer"), OptimizerConfig):
            data["optimizer"] = data["optimizer"].to_dict()
        check_value_kinds(data)
        optimizer = data.pop("optimizer", None) or {}
        optimizer = optimizer.to_dict() if isinstance(optimizer, OptimizerConfig) else dict(optimizer)
        optimizer_fields = {f.name for f in fields(OptimizerConfig)}
        for name in list(data):
            if name in optimizer_fields:
                optimizer[name] = data.pop(name)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError("config", unknown, "known TrainerConfig fields; see `deepsynth train --help`")
        if data.get("preset") is not None:
            # A preset fills the LoRA fields the mapping does not set itself.
            for name, value in _preset_fields(data["preset"]).items():
                data.setdefault(name, value)
        if hub_token is not None:
            data["hub_token"] = hub_token
        return cls(optimizer=OptimizerConfig(**optimizer), **data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainerConfig":
        """Load a ``.json`` or ``.yaml``/``.yml`` config file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError("config file", str(path), f"a readable file ({error.strerror})") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            raise ConfigError("config file", str(path), f"valid {path.suffix.lstrip('.') or 'YAML'} ({error})") from None
        return cls.from_dict(data or {})

    def save(self, path: str | Path) -> Path:
        """Write the config as JSON (or YAML for .yaml/.yml). The token is never written."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json(), encoding="utf-8")
        return path
