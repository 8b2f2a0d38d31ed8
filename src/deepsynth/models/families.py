"""Per-family module names: where the language model lives and what its parts are called.

Everything that knows a model's naming lives here, so LoRA targeting, parameter accounting,
MoE hooks and freezing never hard-code module paths of their own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEEPSEEK_OCR2 = "deepseek_ocr2"
DEEPSEEK_OCR = "deepseek_ocr"
CAUSAL_LM = "causal_lm"
FAMILIES = (DEEPSEEK_OCR2, DEEPSEEK_OCR, CAUSAL_LM)

# Parameter groups used in every trainable-parameter report.
ATTENTION = "attention"
DENSE_MLP = "dense_mlp"
SHARED_EXPERTS = "shared_experts"
ROUTED_EXPERTS = "routed_experts"
ROUTER = "router"
OTHER = "other"
GROUPS = (ATTENTION, DENSE_MLP, SHARED_EXPERTS, ROUTED_EXPERTS, ROUTER, OTHER)


@dataclass(frozen=True)
class FamilyNames:
    """Module naming of one model family, relative to a decoder layer of its language model."""

    family: str
    # Regex prefix of a decoder layer of the language model (vision tower and projector excluded).
    layer_prefix: str
    attention: str = "self_attn"
    mlp: str = "mlp"
    shared_experts: str | None = None
    routed_experts: str | None = None
    router: str | None = None
    # Modules that stay frozen whatever the preset says (vision encoder, projector, separators).
    frozen_prefixes: tuple[str, ...] = ()

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

FAMILY_NAMES: dict[str, FamilyNames] = {
    DEEPSEEK_OCR2: FamilyNames(
        family=DEEPSEEK_OCR2,
        layer_prefix=r"model\.language_model\.layers\.\d+\.",
        shared_experts="shared_experts",
        routed_experts="experts",
        router="gate",
        frozen_prefixes=_OCR_VISION,
    ),
    # DeepSeek-OCR v1 through transformers' native unlimited_ocr classes: same naming, plus the
    # learned row separator of the vision path.
    DEEPSEEK_OCR: FamilyNames(
        family=DEEPSEEK_OCR,
        layer_prefix=r"model\.language_model\.layers\.\d+\.",
        shared_experts="shared_experts",
        routed_experts="experts",
        router="gate",
        frozen_prefixes=(*_OCR_VISION, "model.image_newline"),
    ),
    # Llama / Qwen / Mistral style decoders: dense MLP only.
    CAUSAL_LM: FamilyNames(family=CAUSAL_LM, layer_prefix=r"model\.layers\.\d+\."),
}


def family_names(family: str) -> FamilyNames:
    """Naming of ``family``; raises ValueError naming the accepted families."""
    try:
        return FAMILY_NAMES[family]
    except KeyError:
        raise ValueError(f"model family: unknown {family!r}; expected one of {', '.join(FAMILIES)}") from None
