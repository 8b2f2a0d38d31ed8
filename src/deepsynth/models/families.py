"""The model families DeepSynth supports, as one table: module naming and every family fact.

Everything that knows a family lives here: where its language model sits and what its parts are
called (LoRA targeting, parameter accounting, MoE hooks, freezing), whether it reads images, the
transformers class that loads it and how the Hub labels it (loading, the feature cache, the model
card). Nothing else keeps a per-family list of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEEPSEEK_OCR2 = "deepseek_ocr2"
DEEPSEEK_OCR = "deepseek_ocr"
CAUSAL_LM = "causal_lm"

# Parameter groups used in every trainable-parameter report.
ATTENTION = "attention"
DENSE_MLP = "dense_mlp"
SHARED_EXPERTS = "shared_experts"
ROUTED_EXPERTS = "routed_experts"
ROUTER = "router"
OTHER = "other"
GROUPS = (ATTENTION, DENSE_MLP, SHARED_EXPERTS, ROUTED_EXPERTS, ROUTER, OTHER)

# Logical names a user writes for the MoE router (in lora_target_modules, lora_modules_to_save,
# gate_dropout_keywords), whatever the family calls it.
ROUTER_ALIASES = ("gate", "router")


@dataclass(frozen=True)
class FamilyNames:
    """One model family: its module naming (relative to a decoder layer of its language model) and its facts."""

    family: str
    # Regex prefix of a decoder layer of the language model (vision tower and projector excluded).
    layer_prefix: str
    # transformers class that loads a checkpoint of the family (also named in the model card).
    model_class: str
    attention: str = "self_attn"
    mlp: str = "mlp"
    shared_experts: str | None = None
    routed_experts: str | None = None
    router: str | None = None
    # Modules that stay frozen whatever the preset says (vision encoder, projector, separators).
    frozen_prefixes: tuple[str, ...] = ()
    # Reads page images (a processor with an image processor) rather than text only.
    multimodal: bool = False
    # transformers class that loads the family's preprocessing (the model card's snippet).
    preprocessor: str = "AutoTokenizer"
    # How the Hub labels the family: pipeline tag, card tags, a readable name.
    pipeline_tag: str = "text-generation"
    hub_tags: tuple[str, ...] = ()
    display_name: str = ""

    @property
    def is_moe(self) -> bool:
        return self.router is not None

    def group_of(self, parameter_name: str) -> str:
        """Classify a (possibly PEFT-wrapped) parameter name into one of ``GROUPS``."""
        match = re.search(self.layer_prefix + r"(.*)$", parameter_name)
        if match is None:
            return OTHER
        rest = match.group(1)
        if rest.startswith(self.attention + "."):
            return ATTENTION
        if self.shared_experts and rest.startswith(f"{self.mlp}.{self.shared_experts}."):
            return SHARED_EXPERTS
        if self.routed_experts and rest.startswith(f"{self.mlp}.{self.routed_experts}."):
            return ROUTED_EXPERTS
        if self.router and rest.startswith(f"{self.mlp}.{self.router}."):
            return ROUTER
        if rest.startswith(self.mlp + "."):
            return DENSE_MLP
        return OTHER


_OCR_VISION = ("model.vision_tower.", "model.multi_modal_projector.", "model.view_separator")

_OCR_LAYERS = r"model\.language_model\.layers\.\d+\."
# The DeepSeek-OCR families share their MoE language model and their modality.
_OCR_COMMON = dict(
    layer_prefix=_OCR_LAYERS, shared_experts="shared_experts", routed_experts="experts", router="gate",
    multimodal=True, preprocessor="AutoProcessor", pipeline_tag="image-text-to-text",
)

FAMILY_NAMES: dict[str, FamilyNames] = {
    DEEPSEEK_OCR2: FamilyNames(
        family=DEEPSEEK_OCR2,
        model_class="DeepseekOcr2ForConditionalGeneration",
        frozen_prefixes=_OCR_VISION,
        hub_tags=("ocr", "deepseek-ocr-2", "moe"),
        display_name="DeepSeek-OCR 2",
        **_OCR_COMMON,
    ),
    # DeepSeek-OCR v1 through transformers' native unlimited_ocr classes: same naming, plus the
    # learned row separator of the vision path.
    DEEPSEEK_OCR: FamilyNames(
        family=DEEPSEEK_OCR,
        model_class="UnlimitedOcrForConditionalGeneration",
        frozen_prefixes=(*_OCR_VISION, "model.image_newline"),
        hub_tags=("ocr", "deepseek-ocr", "moe"),
        display_name="DeepSeek-OCR",
        **_OCR_COMMON,
    ),
    # Llama / Qwen / Mistral style decoders: dense MLP only.
    CAUSAL_LM: FamilyNames(
        family=CAUSAL_LM,
        layer_prefix=r"model\.layers\.\d+\.",
        model_class="AutoModelForCausalLM",
        hub_tags=("causal-lm",),
        display_name="causal language model",
    ),
}


def family_names(family: str) -> FamilyNames:
    """Naming of ``family``; raises ValueError naming the accepted families."""
    try:
        return FAMILY_NAMES[family]
    except KeyError:
        raise ValueError(f"model family: unknown {family!r}; expected one of {', '.join(FAMILY_NAMES)}") from None
