"""Training settings: ``OptimizerConfig`` and ``TrainerConfig`` (the one config type of a run).

A config round-trips exactly through ``to_dict``/``from_dict``, JSON and YAML. The Hub token is
held in memory only: it is excluded from ``to_dict``, ``repr`` and every file written from a config.

Each field carries metadata (``help``; optionally ``flag``, ``kind``, ``excludes``, ``secret``:
:mod:`deepsynth.training.config_schema`), as TRL's ``TrlParser`` reads its dataclasses: the CLI's train
flags are generated from it (:func:`config_fields`), and :func:`build_config` is the one way from (file,
preset, overrides) to a config.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from deepsynth.models.image_modes import IMAGE_MODES, all_mode_names
from deepsynth.training.config_schema import FieldInfo, check_kinds, fields_of, is_int, is_number, setting
from deepsynth.training.errors import ConfigError
from deepsynth.training.lora_config import DEFAULT_ADAPTER, FLAT_FIELDS, LORA_PRESETS, AdapterSettings, get_lora_preset

SCHEDULER_TYPES = ("cosine", "linear", "constant", "none")
# The project spells it "summarise".
TASKS = ("summarise", "transcribe")
DTYPES = (None, "float32", "bfloat16", "float16")


def _modes_by_family() -> str:
    labels = {"deepseek_ocr": "DeepSeek-OCR", "deepseek_ocr2": "DeepSeek-OCR-2"}
    return "; ".join(f"{', '.join(modes)} ({labels.get(family, family)})" for family, modes in IMAGE_MODES.items())


@dataclass
class OptimizerConfig:
    """AdamW settings and the learning-rate schedule.

    Warmup is counted in optimizer updates. Give ``warmup_steps`` or ``warmup_ratio`` (not both);
    with neither, 10% of the updates warm up. Warmup is always bounded by the run's length.
    """

    learning_rate: float = setting(5e-5, help="peak learning rate of AdamW")
    weight_decay: float = setting(0.01, help="AdamW weight decay")
    warmup_steps: int | None = setting(None, excludes="warmup_ratio",
                                       help="warmup length in optimizer updates (instead of warmup_ratio)")
    warmup_ratio: float | None = setting(None, excludes="warmup_steps",
                                         help="warmup as a share of the updates, in [0, 1) (default 0.1)")
    scheduler_type: str = setting("cosine", flag="--scheduler", metavar="NAME",
                                  help=f"one of {', '.join(SCHEDULER_TYPES)}")

    DEFAULT_WARMUP_RATIO = 0.1

    def __post_init__(self) -> None:
        if not is_number(self.learning_rate) or self.learning_rate <= 0:
            raise ConfigError("learning_rate", self.learning_rate, "a number > 0")
        if not is_number(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError("weight_decay", self.weight_decay, "a number >= 0")
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ConfigError("warmup_steps", self.warmup_steps, "warmup_steps or warmup_ratio, not both")
        if self.warmup_steps is not None and (not is_int(self.warmup_steps) or self.warmup_steps < 0):
            raise ConfigError("warmup_steps", self.warmup_steps, "an integer >= 0")
        if self.warmup_ratio is not None and (not is_number(self.warmup_ratio) or not 0 <= self.warmup_ratio < 1):
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

    model_name: str | None = setting(None, flag="--model", metavar="NAME",
                                     help="model name or directory (default: the embedded tiny DeepSeek-OCR-2)")
    output_dir: str = setting("outputs/deepsynth-run", metavar="DIR",
                              help="folder for the adapter, metrics and checkpoints")
    preset: str | None = setting(None, metavar="NAME",
                                 help="LoRA preset the lora_* fields come from (see `deepsynth presets`)")

    batch_size: int = setting(1, help="samples per forward/backward step and process")
    num_epochs: int = setting(200, flag="--epochs", help="passes over the training samples")
    gradient_accumulation_steps: int = setting(16, flag="--grad-accum",
                                               help="steps per optimizer update (restarts every epoch)")
    max_train_samples: int | None = setting(None, help="use only the first N training samples")
    max_eval_samples: int | None = setting(None, help="score only the first N eval samples")
    optimizer: OptimizerConfig = setting(factory=OptimizerConfig, help="AdamW and schedule settings")

    # LoRA, flat (the design guide's keyword arguments); defaults from lora_config.DEFAULT_ADAPTER.
    use_lora: bool = setting(DEFAULT_ADAPTER.enabled, flag="--lora",
                             help="train LoRA adapters (--no-lora: train the unfrozen weights in full)")
    lora_rank: int = setting(DEFAULT_ADAPTER.rank, help="LoRA rank r")
    lora_alpha: int = setting(DEFAULT_ADAPTER.alpha, kind="number", help="LoRA alpha (scale alpha / r)")
    lora_dropout: float = setting(DEFAULT_ADAPTER.dropout, help="dropout on the LoRA input, in [0, 1)")
    lora_target_modules: list[str] | None = setting(
        factory=lambda: list(DEFAULT_ADAPTER.target_modules),
        help="logical module names to adapt, comma-separated (q_proj,...,down_proj,router)")
    lora_modules_to_save: list[str] | None = setting(None, help="module names trained in full, comma-separated")
    lora_bias: str = setting(DEFAULT_ADAPTER.bias, metavar="NAME", help="none, all or lora_only")
    lora_include_routed_experts: bool = setting(DEFAULT_ADAPTER.include_routed_experts,
                                                help="MLP targets also adapt every routed expert")
    lora_quantization: str | None = setting(DEFAULT_ADAPTER.quantization, metavar="4bit|8bit",
                                            help="4bit or 8bit base weights held by bitsandbytes (QLoRA; extra [qlora]), CPU or GPU")

    # MoE regularisation (see deepsynth.training.moe and docs/moe.md).
    # gate_dropout_rate: dropout on the gradient of the trainable router tensors (router LoRA or full
    # copy); inactive, with a warning, when the router is frozen. Keywords only ever select the router.
    gate_dropout_rate: float = setting(0.0, flag="--gate-dropout",
                                       help="dropout on the router's gradient, in [0, 1)")
    gate_dropout_keywords: tuple[str, ...] = setting(("gate", "router"),
                                                     help="names that select router tensors, comma-separated")
    # expert_dropout_rate: in training forwards, each routed expert is withheld per token with this
    # probability; at least max(expert_dropout_min_keep, top_k) experts stay selectable.
    expert_dropout_rate: float = setting(0.0, flag="--expert-dropout",
                                         help="chance a routed expert is withheld per token, in [0, 1)")
    expert_dropout_min_keep: int = setting(1, help="experts always left selectable (at least top_k)")
    # router_aux_loss_coef: weight of the load-balancing loss on the router logits (0 = off).
    router_aux_loss_coef: float = setting(0.0, help="weight of the router load-balancing loss (0: off)")

    # Data (deepsynth.data): None = the bundled French samples (train / eval splits).
    data_path: str | None = setting(None, flag="--data", metavar="PATH",
                                    help="data file, folder or Hub dataset (default: the bundled samples)")
    eval_data_path: str | None = setting(None, flag="--eval-data", metavar="PATH",
                                         help="eval data (default: the data's 'eval' split)")
    column_mapping: dict[str, str] | None = setting(
        None, help="canonical=yours pairs, e.g. summary=target,text=document")
    # What the adapter learns: "summarise" (targets are summaries; ROUGE headline) or "transcribe" (OCR:
    # targets are the page's text or markdown; CER/WER headline, deepsynth.evaluation.metrics).
    task: str = setting("summarise", metavar="NAME", help=f"what the targets are: {' or '.join(TASKS)}")
    instruction: str | None = setting(None, metavar="TEXT",
                                      help="prompt (default: per task, the summarisation instruction or 'Free OCR.')")
    # Resolution mode of the OCR families (deepsynth.models.image_modes); eval and generate reuse it.
    image_mode: str | None = setting(None, metavar="NAME",
                                     help="page resolution mode: tiny, small, base, large, gundam (DeepSeek-OCR); "
                                          "dynamic, base, small (DeepSeek-OCR-2); default: the model's own")
    # None: as long as the longest example (page vision tokens + prompt + target + EOS): no target cut.
    max_length: int | None = setting(None, help="tokens per example (default: sized from the data, nothing cut)")
    # Without eval data (no eval file, no 'eval' split), hold this many training samples out for
    # evaluation and early stopping, chosen with ``seed``; they are never trained on. None: no hold-out
    # (the metrics are then on the training samples, and say so). Ignored when eval data is given.
    # The planner (deepsynth.training.plan, ``--auto``) sets it from recommend.holdout_size.
    holdout_samples: int | None = setting(None, help="without eval data: training samples held out for evaluation")

    # Run control.
    seed: int = setting(42, help="seed of LoRA init, dropout, data order and the hold-out")
    dtype: str | None = setting(None, metavar="NAME",
                                help="float32, bfloat16 or float16 (default: bf16 on GPUs that have it, else fp32)")
    gradient_checkpointing: bool = setting(False, help="recompute activations in backward (less memory)")
    # Encode each unique page once when the vision path is frozen (deepsynth.models.feature_cache);
    # false forces per-step encoding. Exact: tests compare losses with and without.
    use_feature_cache: bool = setting(True, flag="--feature-cache",
                                      help="encode each page once when the vision path is frozen")
    # Logits and loss only where a next token is labelled (deepsynth.training.loss): skips lm_head and the
    # fp32 logits of image and prompt positions. Exact: tests compare loss and LoRA gradients with false.
    loss_on_labelled_positions: bool = setting(True, help="compute logits and loss on labelled positions only")
    save_total_limit: int = setting(2, help="checkpoints kept")
    checkpoint_every_updates: int | None = setting(None, flag="--checkpoint-every",
                                                   help="updates between checkpoints (default: about 5 per run)")
    resume_from_checkpoint: str | None = setting("auto", flag="--resume", metavar="auto|never|DIR",
                                                 help="auto (latest in output_dir), never, or a checkpoint folder")
    eval_every_updates: int | None = setting(None, flag="--eval-every",
                                             help="held-out loss every N updates (needed by early stopping)")
    early_stopping_patience: int | None = setting(None, help="stop after N evaluations without improvement")

    # Generation for before/after metrics.
    max_new_tokens: int = setting(96, help="tokens generated per sample for the before/after metrics")
    # Repetition guard: OCR-family models loop without it.
    no_repeat_ngram_size: int = setting(6, help="forbid repeating n-grams of this size in generation (0: off)")
    # Transcription scores (task transcribe) compare NFC text with whitespace collapsed; these relax them.
    metric_ignore_case: bool = setting(False, help="transcribe: CER/WER ignore upper/lower case")
    metric_ignore_punctuation: bool = setting(False, help="transcribe: CER/WER ignore punctuation")

    push_to_hub: bool = setting(False, help="push the adapter to hub_model_id when done")
    hub_model_id: str | None = setting(None, metavar="ORG/NAME", help="Hub repo id (org/name)")
    hub_private: bool = setting(False, help="create the Hub repo private")
    # Held in memory only, never a flag or a file: None lets huggingface_hub read HF_TOKEN.
    hub_token: str | None = setting(None, secret=True, help="Hub token")

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
            if not is_int(value) or value <= 0:
                raise ConfigError(name, value, "an integer > 0")
        for name in ("max_train_samples", "max_eval_samples", "holdout_samples"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value <= 0):
                raise ConfigError(name, value, "null or an integer > 0")
        for name in ("gate_dropout_rate", "expert_dropout_rate"):
            value = getattr(self, name)
            if not is_number(value) or not 0 <= value < 1:
                raise ConfigError(name, value, "a number in [0, 1)")
        if not is_int(self.expert_dropout_min_keep) or self.expert_dropout_min_keep < 1:
            raise ConfigError("expert_dropout_min_keep", self.expert_dropout_min_keep, "an integer >= 1")
        if not is_number(self.router_aux_loss_coef) or self.router_aux_loss_coef < 0:
            raise ConfigError("router_aux_loss_coef", self.router_aux_loss_coef, "a number >= 0 (0 disables)")
        if self.max_length is not None and (not is_int(self.max_length) or self.max_length <= 0):
            raise ConfigError("max_length", self.max_length, "null (sized from the data) or an integer > 0")
        if self.task not in TASKS:
            raise ConfigError("task", self.task, f"one of {', '.join(TASKS)}")
        if self.image_mode is not None and self.image_mode not in all_mode_names():
            raise ConfigError("image_mode", self.image_mode, f"null (the model's default) or {_modes_by_family()}")
        for name in ("save_total_limit", "max_new_tokens"):
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                raise ConfigError(name, value, "an integer > 0")
        for name in ("checkpoint_every_updates", "eval_every_updates", "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value <= 0):
                raise ConfigError(name, value, "null or an integer > 0")
        if not is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            raise ConfigError("no_repeat_ngram_size", self.no_repeat_ngram_size, "an integer >= 0 (0 disables)")
        if not isinstance(self.loss_on_labelled_positions, bool):
            raise ConfigError("loss_on_labelled_positions", self.loss_on_labelled_positions, "true or false")
        if not is_int(self.seed):
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
        _check_hub_model_id(self.hub_model_id)
        if self.lora_quantization is not None and not self.use_lora:
            raise ConfigError("lora_quantization", self.lora_quantization,
                              "null when use_lora is false (a 4/8-bit base is frozen: QLoRA trains LoRA adapters)")
        self.lora_config()  # the LoRA fields, checked as the one AdapterSettings shape

    def lora_config(self) -> AdapterSettings:
        """The LoRA settings of this run (AdapterSettings; errors name the flat field, ``lora_rank``)."""
        return AdapterSettings.from_flat({name: getattr(self, name) for name in FLAT_FIELDS})

    def value(self, name: str) -> Any:
        """A field's value by the name :func:`build_config` takes (optimizer fields flat: ``learning_rate``)."""
        return getattr(self.optimizer, name) if name in _OPTIMIZER_FIELDS else getattr(self, name)

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
            for name, value in get_lora_preset(data["preset"]).to_flat().items():
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


def check_value_kinds(data: dict[str, Any]) -> None:
    """Refuse values of the wrong *kind* for a TrainerConfig field (optimizer fields nested), naming it
    (ConfigError): :func:`deepsynth.training.config_schema.check_kinds` with the configs' own type hints."""
    check_kinds(data, TrainerConfig, OptimizerConfig)


def config_fields() -> list[FieldInfo]:
    """Every field of TrainerConfig in declaration order, OptimizerConfig's in the place of ``optimizer``."""
    return fields_of(TrainerConfig)


# Fields never serialised (metadata ``secret``).
SECRET_FIELDS = tuple(f.name for f in fields(TrainerConfig) if f.metadata.get("secret"))
_OPTIMIZER_FIELDS = tuple(f.name for f in fields(OptimizerConfig))


def _check_hub_model_id(repo_id: str | None) -> None:
    """``org/name`` Hub repo id, checked with the settings, not after the run trained and its push failed."""
    if repo_id is None:
        return
    from deepsynth.publishing.hub import validate_hub_repo_id

    try:
        validate_hub_repo_id(repo_id)
    except ValueError:
        raise ConfigError("hub_model_id", repo_id, "null or a Hub repo id 'org/name'") from None


def build_config(
    source: str | Path | Mapping[str, Any] | None = None,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    hub_token: str | None = None,
) -> TrainerConfig:
    """The one way from (config file, preset, overrides) to a TrainerConfig (the CLI's ``train``).

    In order, each step replacing what came before: ``source`` — a .yaml/.json file, a mapping of
    fields, or None for the defaults; ``preset`` — all its LoRA fields (and the ``preset`` label);
    ``overrides`` — a plain dict of TrainerConfig fields (optimizer fields flat, e.g.
    ``learning_rate``), applied as given (None included). Overriding a field whose metadata says
    ``excludes`` clears that field (``warmup_steps`` clears ``warmup_ratio``) unless it is overridden
    too. Raises ConfigError naming the first invalid field.
    """
    if isinstance(source, (str, Path)):
        data = TrainerConfig.from_file(source).to_dict()
    else:
        data = TrainerConfig.from_dict(dict(source or {})).to_dict()
    if preset is not None:
        data.update(preset=preset, **get_lora_preset(preset).to_flat())
    overrides = dict(overrides or {})
    excludes = {info.name: info.metadata.get("excludes") for info in config_fields()}
    for name, value in overrides.items():
        holder = data["optimizer"] if name in _OPTIMIZER_FIELDS else data
        holder[name] = copy.deepcopy(value)
        cleared = excludes.get(name)
        if cleared and cleared not in overrides:
            holder[cleared] = None
    return TrainerConfig.from_dict(data, hub_token=hub_token)
