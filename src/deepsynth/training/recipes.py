"""The presets' training recipes: the seed's settings with the learning rates our measurements support, and why.

:func:`deepsynth.training.recommend.recommend` picks a recipe by dataset size; this module holds the
recipes, the evidence behind each learning rate (docs/quality.md) and the words that say where it
was measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deepsynth.training.config import OptimizerConfig


@dataclass(frozen=True)
class Recipe:
    """The seed's training settings for one preset, with the learning rate our measurements support.

    ``learning_rate`` is the rate the full-length ablation supports (docs/quality.md, issue #17);
    ``guide_learning_rate`` is the design guide's, reachable with ``learning_rates="guide"``
    (``deepsynth recommend --guide-learning-rates``) or ``--learning-rate``. ``evidence`` is the
    measured reason for the difference, shown in the recommendation's notes.
    """

    batch_size: int
    gradient_accumulation_steps: int
    num_epochs: int
    learning_rate: float
    guide_learning_rate: float
    evidence: str = ""
    # Where ``evidence`` was measured: the sample counts and the models (as :func:`evidence_model` names them).
    evidence_samples: tuple[int, ...] = ()
    evidence_models: tuple[str, ...] = ()
    weight_decay: float = 0.01
    # The seed asks for warmup over 10-15% of the steps; its absolute counts (50 warmup steps for a
    # run it believed had ~56 updates) came from a wrong update count, so the ratio is what we keep.
    warmup_ratio: float = 0.1
    scheduler_type: str = "cosine"

    def rate(self, learning_rates: str) -> float:
        return self.guide_learning_rate if learning_rates == "guide" else self.learning_rate


# Full-length runs of each recipe on the embedded pretrained base, 12 held-out documents, 3 seeds
# (benchmarks/quality/ablation.py --full-length; medians, seed ranges in docs/quality.md).
RECIPES: dict[str, Recipe] = {
    "tiny_data": Recipe(
        batch_size=1, gradient_accumulation_steps=16, num_epochs=300, learning_rate=5e-4, guide_learning_rate=5e-5,
        evidence="at n=3, x10 (5e-4) matched the guide's 5e-5 on held-out loss (7.47 vs 7.53) and ROUGE-L "
                 "(0.061 vs 0.050, seed ranges overlap) and stopped early after 105 of 300 updates (2.8x less "
                 "time); x3 had the lowest loss (7.07) but the worst ROUGE-L (0.018); on SmolLM2-135M x10 tied too "
                 "(loss 2.116 vs 2.120, ROUGE-L 0.209 vs 0.218) in half the time",
        evidence_samples=(3,), evidence_models=("the embedded tiny model", "SmolLM2-135M-Instruct")),
    "balanced": Recipe(
        batch_size=1, gradient_accumulation_steps=16, num_epochs=200, learning_rate=2e-4, guide_learning_rate=2e-5,
        evidence="at n=10, x10 (2e-4) beat the guide's 2e-5 on held-out loss (6.59 vs 8.04) and ROUGE-L "
                 "(0.078 vs 0.035) in 3 of 3 seeds, with early stopping after ~130 of 200 updates",
        evidence_samples=(10,), evidence_models=("the embedded tiny model",)),
    "high_capacity_moe": Recipe(
        batch_size=2, gradient_accumulation_steps=16, num_epochs=200, learning_rate=6e-5, guide_learning_rate=2e-5,
        evidence="at n=50 (1 seed, 400 updates), x3 (6e-5) gave the best held-out loss (6.10; x1 6.69, x10 6.32, "
                 "x30 7.63) and ROUGE-L (0.125; x1 0.016, x10 0.108, x30 0.086), CER 0.762 vs 0.914 at x1",
        evidence_samples=(50,), evidence_models=("the embedded tiny model",)),
}
LEARNING_RATES = ("evidence", "guide")


def evidence_model(model_name: str) -> str:
    """How the learning-rate evidence names ``model_name``: one of the models docs/quality.md measured, else the
    name itself (the evidence is then extrapolated to it)."""
    from deepsynth.models.tiny import EMBEDDED_MODEL_NAME

    if model_name == EMBEDDED_MODEL_NAME:
        return "the embedded tiny model"
    if model_name.rstrip("/").lower().endswith("smollm2-135m-instruct"):
        return "SmolLM2-135M-Instruct"
    return model_name


def evidence_scope(recipe: Recipe, train_samples: int, model_name: str) -> str:
    """Where the recipe's learning rate was measured, and whether this run (its n, its model) is extrapolated."""
    samples = "/".join(str(n) for n in recipe.evidence_samples)
    where = f"measured at n={samples} on {' and '.join(recipe.evidence_models)}"
    named = evidence_model(model_name)
    if train_samples in recipe.evidence_samples and named in recipe.evidence_models:
        return where
    on = "" if named in recipe.evidence_models else f" on {named}"
    return f"{where}; extrapolated to n={train_samples}{on}"


def recipe_optimizer(recipe: Recipe) -> OptimizerConfig:
    """The recipe's AdamW settings and schedule (warmup as its ratio)."""
    return OptimizerConfig(learning_rate=recipe.learning_rate, weight_decay=recipe.weight_decay,
                           warmup_ratio=recipe.warmup_ratio, scheduler_type=recipe.scheduler_type)


def learning_rate_note(preset_name: str, recipe: Recipe, learning_rates: str, scope: str) -> str:
    """Which learning rate was chosen and why, in the recommendation's notes; ``scope`` says where the
    evidence was measured and whether this run is extrapolated from it (:func:`evidence_scope`)."""
    guide, measured = f"{recipe.guide_learning_rate:.0e}", f"{recipe.learning_rate:.0e}"
    if learning_rates == "guide":
        return (f"learning rate {guide}: the design guide's rate for {preset_name}, as asked; our full-length runs "
                f"support {measured} ({recipe.evidence}; {scope}; docs/quality.md)")
    return (f"learning rate {measured}, not the design guide's {guide}: {recipe.evidence} ({scope}; docs/quality.md). "
            f"The guide's rate stays available: set the learning rate to {guide}")


def recipe_training_config(recipe: Recipe, accumulation: int, learning_rates: str) -> dict[str, Any]:
    """The TrainerConfig fields the recipe sets (optimizer fields flat), with ``accumulation`` as capped."""
    return {
        "batch_size": recipe.batch_size,
        "num_epochs": recipe.num_epochs,
        "gradient_accumulation_steps": accumulation,
        "learning_rate": recipe.rate(learning_rates),
        "weight_decay": recipe.weight_decay,
        "warmup_ratio": recipe.warmup_ratio,  # a ratio, not a count: stays right if the run is shortened
        "scheduler_type": recipe.scheduler_type,
    }
