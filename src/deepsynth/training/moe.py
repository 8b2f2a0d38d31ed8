"""MoE adaptation: router gradient dropout, expert dropout, load-balancing loss, expert-utilization telemetry.

Each knob acts on the router found through the model family's naming
(:func:`deepsynth.models.families.family_names`: ``mlp.gate`` in the DeepSeek-OCR families), whether
PEFT wrapped it (``ParamWrapper`` for router LoRA, ``ModulesToSaveWrapper`` for full training) or not.
Decisions and measurements are in ``docs/moe.md``.

* **Gate dropout** (``gate_dropout_rate``) drops elements of the *gradient* of the trainable router
  tensors (router LoRA A/B, or the full router copy) with a Bernoulli mask rescaled by 1/(1-p):
  forward passes, evaluation and inference are untouched. With a frozen router it is reported
  INACTIVE instead of silently doing nothing.
* **Expert dropout** (``expert_dropout_rate``, ``expert_dropout_min_keep``) withholds, in training
  forwards only, a random subset of routed experts per token: their router logits are masked before
  softmax / top-k, so the router chooses among the experts left. At least
  ``max(min_keep, top_k)`` experts stay selectable for every token.
* **Aux loss** (``router_aux_loss_coef``) adds transformers' Switch-Transformer load-balancing loss
  (``load_balancing_loss_func``, as in Mixtral) on the model's ``router_logits`` to the training loss.
* **Telemetry** counts, per MoE layer, how many token slots each routed expert received in training
  forwards and in evaluation forwards (forward hooks on the router's top-k indices; no extra pass).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from deepsynth.models.families import ROUTER, family_names
from deepsynth.training.loss import labelled_loss_inputs

LOGGER = logging.getLogger("deepsynth")

ROUTER_ALIASES = ("gate", "router")
PHASES = ("train", "eval")
# PEFT inserts these between a module's name and the module it wraps.
_PEFT_INFIXES = re.compile(r"\.(base_layer|original_module|modules_to_save\.[^.]+)(?=\.|$)")
# Seed offsets: the run seed drives every mask, each knob with its own stream.
GATE_DROPOUT_SEED_OFFSET = 1
EXPERT_DROPOUT_SEED_OFFSET = 2

COUNTING_RULE = (
    "per MoE layer and expert: token positions routed to it (experts_per_token slots per token), "
    "padding excluded, image and prompt tokens included; eval = every forward in eval mode after "
    "the baseline evaluation (held-out evaluations and the final evaluation, generated tokens included)"
)


# --------------------------------------------------------------------------------------------------
# Finding the routers
# --------------------------------------------------------------------------------------------------


def _is_peft_wrapper(module: nn.Module) -> bool:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper))


def _strip_peft(name: str) -> str:
    return _PEFT_INFIXES.sub("", name.removeprefix("base_model.model."))


def find_routers(model: nn.Module, family: str) -> list[tuple[str, nn.Module]]:
    """(layer name, router module) for every MoE router of ``model``'s language model.

    The router is the innermost module (a ``TopkRouter``), under PEFT's wrappers when there are
    some; a full-training copy (``modules_to_save``) and its frozen original are both returned. The
    layer name is PEFT-free, e.g. ``model.language_model.layers.1``.
    """
    names = family_names(family)
    if not names.router:
        return []
    layer = names.layer_prefix.removesuffix(r"\.")
    pattern = re.compile(f"^({layer})" + re.escape(f".{names.mlp}.{names.router}") + "$")
    found = []
    for name, module in model.named_modules():
        match = pattern.match(_strip_peft(name))
        if match and not _is_peft_wrapper(module) and hasattr(module, "top_k") and hasattr(module, "num_experts"):
            found.append((match.group(1), module))
    return found


def router_parameters(model: nn.Module, family: str) -> dict[str, nn.Parameter]:
    """The trainable router tensors of ``model`` (router LoRA A/B, a full router copy), by name."""
    names = family_names(family)
    if not names.router:
        return {}
    return {name: p for name, p in model.named_parameters() if p.requires_grad and names.group_of(name) == ROUTER}


def _in_backward() -> bool:
    """True while autograd runs a backward pass (e.g. a checkpointed layer being recomputed)."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


# --------------------------------------------------------------------------------------------------
# Gate dropout: dropout on the router's gradient
# --------------------------------------------------------------------------------------------------


def resolve_gate_dropout(
    model: nn.Module, family: str, keywords: Iterable[str]
) -> tuple[dict[str, nn.Parameter], list[str]]:
    """The parameters gate dropout applies to, and warnings about keywords that name no router.

    Keywords are kept for compatibility with upstream configs, but they only select the router of
    the model's family (``gate`` / ``router`` / the family's router name), never ``gate_proj``.
    """
    names = family_names(family)
    warnings: list[str] = []
    if not names.router:
        return {}, []
    router_words = {*ROUTER_ALIASES, names.router, f"{names.mlp}.{names.router}"}
    keywords = list(dict.fromkeys(keywords))
    ignored = [word for word in keywords if word not in router_words]
    if ignored:
        warnings.append(
            f"gate_dropout_keywords {ignored} do not name the router ({names.mlp}.{names.router}) and are ignored: "
            "gate dropout applies to the router only, never to gate_proj"
        )
    if len(ignored) == len(keywords):
        return {}, warnings
    return router_parameters(model, family), warnings


class GateDropout:
    """Drops each element of the router's gradient with probability ``rate`` (survivors × 1/(1-rate)).

    Installed with ``Tensor.register_hook`` on each trainable router tensor; one fresh mask per
    backward pass and tensor, drawn on CPU from a generator seeded with ``seed``.
    """

    def __init__(self, rate: float, seed: int = 0) -> None:
        if not 0 <= rate < 1:
            raise ValueError(f"gate dropout rate: expected a number in [0, 1), got {rate}")
        self.rate = rate
        self.generator = torch.Generator().manual_seed(seed)
        self.dropped = 0
        self.total = 0
        self._handles: list[Any] = []

    def attach(self, parameters: Iterable[torch.Tensor]) -> "GateDropout":
        for parameter in parameters:
            self._handles.append(parameter.register_hook(self.mask_gradient))
        return self

    def mask_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        keep = torch.rand(grad.shape, generator=self.generator) >= self.rate
        self.dropped += int(keep.numel() - keep.sum())
        self.total += keep.numel()
        return grad * keep.to(device=grad.device, dtype=grad.dtype) / (1.0 - self.rate)

    @property
    def dropped_fraction(self) -> float | None:
        return self.dropped / self.total if self.total else None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


# --------------------------------------------------------------------------------------------------
# Expert dropout: withhold routed experts in training forwards
# --------------------------------------------------------------------------------------------------


def route_from_logits(router: nn.Module, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-k weights, top-k indices) from router logits, exactly as the DeepSeek TopkRouter computes them."""
    scores = logits.softmax(dim=-1, dtype=torch.float32)
    if getattr(router, "topk_method", "greedy") == "group_limited_greedy":
        groups, experts = router.num_group, router.num_experts
        group_scores = scores.view(-1, groups, experts // groups).max(dim=-1).values
        group_idx = torch.topk(group_scores, k=router.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
        score_mask = group_mask.unsqueeze(-1).expand(-1, groups, experts // groups).reshape(-1, experts)
        scores = scores.masked_fill(~score_mask.bool(), 0.0)
    weights, indices = torch.topk(scores, k=router.top_k, dim=-1, sorted=False)
    return weights * getattr(router, "routed_scaling_factor", 1.0), indices


class ExpertDropout:
    """Withholds routed experts in training forwards; evaluation and generation are untouched.

    For each training forward, MoE layer and token, every routed expert is withheld independently
    with probability ``rate``; then experts are restored at random until at least
    ``max(min_keep, top_k)`` are selectable. Withheld experts get the lowest representable logit
    before softmax and top-k, so the router picks among the others exactly as a router without
    those experts would (their probability is 0, the others' renormalise). The router's first output
    (``router_logits``, which the aux loss reads) is the masked logits. A checkpointed layer
    recomputed during backward reuses the mask of its forward.
    """

    def __init__(self, rate: float, min_keep: int = 1, seed: int = 0) -> None:
        if not 0 <= rate < 1:
            raise ValueError(f"expert dropout rate: expected a number in [0, 1), got {rate}")
        if min_keep < 1:
            raise ValueError(f"expert dropout min_keep: expected an integer >= 1, got {min_keep}")
        self.rate = rate
        self.min_keep = min_keep
        self.generator = torch.Generator().manual_seed(seed)
        self.withheld = 0
        self.slots = 0
        self._last: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def attach(self, routers: Iterable[tuple[str, nn.Module]]) -> "ExpertDropout":
        for layer, router in routers:
            # prepend: runs before transformers' output recorder, which then records the masked logits.
            self._handles.append(router.register_forward_hook(self._hook(layer), prepend=True))
        return self

    def sample(self, tokens: int, experts: int, floor: int) -> torch.Tensor:
        """Boolean [tokens, experts] mask of withheld experts, at least ``floor`` kept per token."""
        draws = torch.rand(tokens, experts, generator=self.generator)
        withheld = draws < self.rate
        keep = torch.topk(draws, k=min(floor, experts), dim=-1).indices  # a uniform random subset
        return withheld.scatter_(1, keep, False)

    def _hook(self, layer: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: tuple) -> tuple | None:
            if not module.training or self.rate == 0:
                return None
            logits = output[0]
            if _in_backward() and layer in self._last and self._last[layer].shape == logits.shape:
                withheld = self._last[layer]
            else:
                withheld = self.sample(logits.shape[0], logits.shape[1], max(self.min_keep, module.top_k))
                self.withheld += int(withheld.sum())  # counted on CPU: no device sync
                self.slots += withheld.numel()
                withheld = self._last[layer] = withheld.to(logits.device)
            masked = logits.masked_fill(withheld, torch.finfo(logits.dtype).min)
            weights, indices = route_from_logits(module, masked)
            return (masked, weights.to(output[1].dtype), indices, *output[3:])

        return hook

    @property
    def withheld_fraction(self) -> float | None:
        return self.withheld / self.slots if self.slots else None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._last.clear()


# --------------------------------------------------------------------------------------------------
# Telemetry: tokens per expert
# --------------------------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class ExpertUtilization:
    """Counts token slots per routed expert and MoE layer, separately for training and eval forwards.

    Counting rule: see ``COUNTING_RULE``. Padding is recognised from the 2-D ``attention_mask``
    given to the model's forward (the last S columns for an S-token forward, so cached generation
    steps count their new tokens only); without one every position counts.
    """

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, torch.Tensor]] = {phase: {} for phase in PHASES}
        self.num_experts: int | None = None
        self.top_k: int | None = None
        self._attention_mask: torch.Tensor | None = None
        self._handles: list[Any] = []

    def attach(self, model: nn.Module, routers: Iterable[tuple[str, nn.Module]]) -> "ExpertUtilization":
        base = _unwrap(model)
        self._handles.append(base.register_forward_pre_hook(self._remember_mask, with_kwargs=True))
        self._handles.append(base.register_forward_hook(self._forget_mask))
        for layer, router in routers:
            self.num_experts, self.top_k = router.num_experts, router.top_k
            self._handles.append(router.register_forward_hook(self._hook(layer)))
        return self

    def _remember_mask(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        self._attention_mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _forget_mask(self, module, args, output):
        self._attention_mask = None

    def _row_mask(self, hidden: Any, rows: int) -> torch.Tensor | None:
        mask = self._attention_mask
        if mask is None or not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
            return None
        batch, length = hidden.shape[:2]
        if batch * length != rows or mask.shape[0] != batch or mask.shape[1] < length:
            return None
        return mask[:, -length:].reshape(-1).bool()

    def _hook(self, layer: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: tuple) -> None:
            if _in_backward():  # a checkpointed layer recomputed in backward: already counted
                return
            indices = output[2]
            rows = self._row_mask(args[0] if args else None, indices.shape[0])
            if rows is not None:
                indices = indices[rows.to(indices.device)]
            counts = torch.bincount(indices.reshape(-1), minlength=module.num_experts)[: module.num_experts]
            phase = self.counts["train" if module.training else "eval"]
            phase[layer] = phase[layer] + counts if layer in phase else counts

        return hook

    def phase_counts(self, phase: str) -> dict[str, list[int]]:
        return {layer: [int(c) for c in counts.cpu()] for layer, counts in sorted(self.counts[phase].items(), key=_layer_key)}

    def report(self) -> dict[str, Any]:
        """``{"train": {"layers": {layer: [count per expert]}, "summary": {...}}, "eval": {...}}``."""
        return {phase: {"layers": (layers := self.phase_counts(phase)),
                        "summary": summarise(layers, self.top_k, self.num_experts)} for phase in PHASES}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _layer_key(item: tuple[str, Any]) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in item[0].split("."))


def layer_stats(counts: list[int]) -> dict[str, float | int]:
    """Entropy (nats), entropy / ln(experts) (1 = perfectly balanced), largest share, unused experts."""
    total = sum(counts)
    shares = [c / total for c in counts] if total else [0.0] * len(counts)
    entropy = -sum(s * math.log(s) for s in shares if s > 0)
    return {
        "entropy": round(entropy, 6),
        "normalized_entropy": round(entropy / math.log(len(counts)), 6) if len(counts) > 1 else 1.0,
        "max_share": round(max(shares), 6) if shares else 0.0,
        "unused": sum(1 for c in counts if c == 0),
    }


def summarise(layers: dict[str, list[int]], top_k: int | None, num_experts: int | None) -> dict[str, Any]:
    """Summary of one phase: token count, mean entropies, worst max-share, unused experts, per layer."""
    per_layer = {layer: layer_stats(counts) for layer, counts in layers.items()}
    summary: dict[str, Any] = {
        "tokens": (sum(next(iter(layers.values()))) // top_k) if layers and top_k else 0,
        "experts_per_token": top_k,
        "num_experts": num_experts,
    }
    if per_layer:
        stats = list(per_layer.values())
        summary.update(
            mean_entropy=round(sum(s["entropy"] for s in stats) / len(stats), 6),
            mean_normalized_entropy=round(sum(s["normalized_entropy"] for s in stats) / len(stats), 6),
            max_share=max(s["max_share"] for s in stats),
            unused_experts=sum(s["unused"] for s in stats),
            per_layer=per_layer,
        )
    return summary


def plot_expert_utilization(report: dict[str, Any], path: Path) -> Path | None:
    """Heat map (MoE layers × experts, share of each layer's token slots) per phase, as a PNG."""
    phases = [phase for phase in PHASES if report.get(phase, {}).get("layers")]
    if not phases:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(phases), figsize=(4.5 * len(phases), 3.2), dpi=100, squeeze=False)
    for axis, phase in zip(axes[0], phases):
        layers = report[phase]["layers"]
        shares = [[c / max(1, sum(counts)) for c in counts] for counts in layers.values()]
        image = axis.imshow(shares, aspect="auto", cmap="viridis", vmin=0)
        summary = report[phase]["summary"]
        axis.set_title(f"{phase}: {summary['tokens']} tokens, H/Hmax {summary.get('mean_normalized_entropy', 0):.3f}",
                       fontsize=9)
        axis.set_xlabel("routed expert")
        axis.set_yticks(range(len(layers)), [name.rsplit(".", 1)[-1] for name in layers])
        axis.set_ylabel("MoE layer")
        figure.colorbar(image, ax=axis, label="share of token slots")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def routing_decisions(model: nn.Module, family: str, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Top-k expert indices per MoE layer for one forward of ``inputs`` (sorted per token, eval mode)."""
    decisions: dict[str, torch.Tensor] = {}
    handles = []
    for layer, router in find_routers(model, family):
        def hook(module, args, output, layer=layer):
            decisions[layer] = output[2].sort(dim=-1).values.cpu()
        handles.append(router.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return dict(sorted(decisions.items(), key=_layer_key))


# --------------------------------------------------------------------------------------------------
# Aux loss
# --------------------------------------------------------------------------------------------------


def load_balancing_loss(
    router_logits: tuple[torch.Tensor, ...], num_experts: int, top_k: int, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """transformers' Switch-Transformer load-balancing loss over every MoE layer.

    ``E · Σ_e f_e · P_e`` with f_e the fraction of top-k slots and P_e the mean router probability of
    expert e (padding excluded): ``top_k`` when routing is perfectly balanced, larger when it is not.
    """
    if attention_mask is not None and attention_mask.dim() != 2:
        attention_mask = None
    return load_balancing_loss_func(tuple(router_logits), num_experts, top_k, attention_mask)


# --------------------------------------------------------------------------------------------------
# What a training run installs
# --------------------------------------------------------------------------------------------------


@dataclass
class MoeRegularisation:
    """The MoE knobs of one run, installed on the model; ``report()`` feeds metrics.json."""

    family: str
    router_mode: str | None = None
    gate_dropout: GateDropout | None = None
    gate_dropout_rate: float = 0.0
    gate_dropout_parameters: list[str] = field(default_factory=list)
    expert_dropout: ExpertDropout | None = None
    expert_dropout_rate: float = 0.0
    expert_dropout_min_keep: int = 1
    aux_loss_coef: float = 0.0
    num_experts: int | None = None
    top_k: int | None = None
    utilization: ExpertUtilization | None = None
    warnings: list[str] = field(default_factory=list)
    aux_losses: list[float] = field(default_factory=list)

    @property
    def is_moe(self) -> bool:
        return self.num_experts is not None

    @property
    def aux_loss_active(self) -> bool:
        return self.is_moe and self.aux_loss_coef > 0

    def aux_loss(self, outputs: Any, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        logits = getattr(outputs, "router_logits", None)
        if not logits:
            return None
        return load_balancing_loss(logits, self.num_experts, self.top_k, attention_mask)

    def report(self) -> dict[str, Any]:
        """``{"moe": {...knobs, whether each acted, measured rates...}, "expert_utilization": {...}}``."""
        moe = {
            "router_mode": self.router_mode,
            "gate_dropout_rate": self.gate_dropout_rate,
            "gate_dropout_active": self.gate_dropout is not None,
            "gate_dropout_tensors": len(self.gate_dropout_parameters),
            "gate_dropout_dropped_fraction": self.gate_dropout.dropped_fraction if self.gate_dropout else None,
            "expert_dropout_rate": self.expert_dropout_rate,
            "expert_dropout_min_keep": self.expert_dropout_min_keep,
            "expert_dropout_active": self.expert_dropout is not None,
            "expert_dropout_withheld_fraction": self.expert_dropout.withheld_fraction if self.expert_dropout else None,
            "router_aux_loss_coef": self.aux_loss_coef,
            "aux_loss_active": self.aux_loss_active,
            "aux_loss_mean": sum(self.aux_losses) / len(self.aux_losses) if self.aux_losses else None,
            "aux_loss_last": self.aux_losses[-1] if self.aux_losses else None,
            "warnings": self.warnings,
        }
        return {"moe": moe, "expert_utilization": self.utilization.report() if self.utilization else None}

    def remove(self) -> None:
        for part in (self.gate_dropout, self.expert_dropout, self.utilization):
            if part is not None:
                part.remove()


def install_moe(
    model: nn.Module,
    family: str,
    *,
    gate_dropout_rate: float = 0.0,
    gate_dropout_keywords: Iterable[str] = ROUTER_ALIASES,
    expert_dropout_rate: float = 0.0,
    expert_dropout_min_keep: int = 1,
    router_aux_loss_coef: float = 0.0,
    seed: int = 0,
    router_mode: str | None = None,
    telemetry: bool = True,
) -> MoeRegularisation:
    """Install the MoE knobs and telemetry on ``model`` (PEFT-wrapped or not); log what is inactive."""
    routers = find_routers(model, family)
    moe = MoeRegularisation(family, router_mode=router_mode, gate_dropout_rate=gate_dropout_rate,
                            expert_dropout_rate=expert_dropout_rate, expert_dropout_min_keep=expert_dropout_min_keep,
                            aux_loss_coef=router_aux_loss_coef)
    if routers:
        moe.num_experts, moe.top_k = routers[0][1].num_experts, routers[0][1].top_k
    no_router = f"this {family} model has no MoE router"

    if gate_dropout_rate > 0:
        parameters, notes = resolve_gate_dropout(model, family, gate_dropout_keywords)
        moe.warnings.extend(notes)
        if parameters:
            moe.gate_dropout = GateDropout(gate_dropout_rate, seed + GATE_DROPOUT_SEED_OFFSET).attach(parameters.values())
            moe.gate_dropout_parameters = sorted(parameters)
        else:
            if not routers:
                reason = no_router
            elif router_parameters(model, family):
                reason = "gate_dropout_keywords name no router"
            else:
                reason = ("the router is frozen (no trainable router tensor); train it with router LoRA (preset "
                          "router_focused, or 'gate' in lora_target_modules) or in full (lora_modules_to_save: ['gate'])")
            moe.warnings.append(f"gate dropout is INACTIVE (gate_dropout_rate {gate_dropout_rate}): {reason}")
    if expert_dropout_rate > 0:
        if routers:
            moe.expert_dropout = ExpertDropout(expert_dropout_rate, expert_dropout_min_keep,
                                               seed + EXPERT_DROPOUT_SEED_OFFSET).attach(routers)
            if moe.top_k and expert_dropout_min_keep < moe.top_k:
                LOGGER.info("expert dropout keeps at least top_k = %d experts per token (min_keep %d is lower)",
                            moe.top_k, expert_dropout_min_keep)
        else:
            moe.warnings.append(f"expert dropout is INACTIVE (expert_dropout_rate {expert_dropout_rate}): {no_router}")
    if router_aux_loss_coef > 0 and not routers:
        moe.warnings.append(f"the router aux loss is INACTIVE (router_aux_loss_coef {router_aux_loss_coef}): {no_router}")
    if telemetry and routers:
        moe.utilization = ExpertUtilization().attach(model, routers)
    for warning in moe.warnings:
        LOGGER.warning("MoE: %s", warning)
    return moe


class MoeTrainer(Trainer):
    """transformers' Trainer plus the router aux loss (training forwards only) and its ``aux_loss`` log entry.

    The aux term is ``coef × load_balancing_loss`` per micro-batch, scaled like the language-model
    loss so that an optimizer update sees its mean over the accumulated micro-batches. The logged
    ``loss`` is the total optimised loss; ``aux_loss`` is the unscaled balance term.
    With ``loss_on_labelled_positions``, logits and loss are computed where a label exists only
    (:mod:`deepsynth.training.loss`), in training and evaluation forwards alike.
    """

    def __init__(self, *args: Any, moe: MoeRegularisation | None = None, loss_on_labelled_positions: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.moe = moe
        self.loss_on_labelled_positions = loss_on_labelled_positions
        self._aux_since_log: list[float] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
        inputs = labelled_loss_inputs(self, model, inputs)
        moe = self.moe
        if moe is None or not moe.aux_loss_active or not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        attention_mask = inputs.get("attention_mask")
        loss, outputs = super().compute_loss(model, {**inputs, "output_router_logits": True}, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        aux = moe.aux_loss(outputs, attention_mask)
        if aux is None and not moe.aux_losses and not getattr(self, "_warned_no_router_logits", False):
            LOGGER.warning("MoE: the model returned no router_logits: the router aux loss is not applied")
            self._warned_no_router_logits = True
        if aux is not None:
            scaled_for_accumulation = self.loss_is_scaled_for_ga if self.loss_is_scaled_for_ga is not None else (
                (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None)
            share = getattr(self, "current_gradient_accumulation_steps", 1) if scaled_for_accumulation else 1
            loss = loss + (moe.aux_loss_coef / share) * aux.to(loss.dtype)
            value = float(aux.detach())
            self._aux_since_log.append(value)
            moe.aux_losses.append(value)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:  # noqa: D102
        if "loss" in logs and self._aux_since_log:
            logs["aux_loss"] = sum(self._aux_since_log) / len(self._aux_since_log)
            self._aux_since_log = []
        super().log(logs, start_time)
