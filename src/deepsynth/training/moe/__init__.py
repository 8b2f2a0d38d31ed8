"""MoE adaptation: router training helpers, gate / expert dropout, load-balancing loss, expert-utilization telemetry.

Each knob acts on the router found through the model family's naming
(:func:`deepsynth.models.families.family_names`: ``mlp.gate`` in the DeepSeek-OCR families), whether
PEFT wrapped it (``ParamWrapper`` for router LoRA, ``ModulesToSaveWrapper`` for full training) or
not. Decisions and measurements are in ``docs/moe.md``. The modules, each importing only those
before it:

* :mod:`.routers` — finding the routers, their trainable tensors and their routing decisions;
* :mod:`.regularisers` — gate dropout (``gate_dropout_rate``, on the router's gradient), expert
  dropout (``expert_dropout_rate``, ``expert_dropout_min_keep``) and the load-balancing loss
  (``router_aux_loss_coef``, added by :class:`deepsynth.training.trainer.MoeTrainer`);
* :mod:`.telemetry` — tokens per routed expert and MoE layer, in training and in evaluation;
* :mod:`.install` — :func:`install_moe`, which puts the knobs a run asks for on its model.
"""

from deepsynth.training.moe.install import MoeRegularisation, install_moe
from deepsynth.training.moe.routers import find_routers, routing_decisions
from deepsynth.training.moe.telemetry import plot_expert_utilization

__all__ = ["MoeRegularisation", "find_routers", "install_moe", "plot_expert_utilization", "routing_decisions"]
