"""Expert-utilization telemetry: token slots per routed expert and MoE layer, their summary and heat map.

Counting rule, per MoE layer and routed expert: the token positions routed to it (``top_k`` slots
per token), padding excluded, image and prompt tokens included; training forwards and evaluation
forwards apart ("eval" = every forward in eval mode after the baseline evaluation: held-out
evaluations and the final evaluation, generated tokens included). Forward hooks on the router's
top-k indices: no extra pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepsynth.training.moe.routers import in_backward, layer_key, unwrap_peft

PHASES = ("train", "eval")


class ExpertUtilization:
    """Counts token slots per routed expert and MoE layer, separately for training and eval forwards.

    Counting rule: see the module docstring. Padding is recognised from the 2-D ``attention_mask``
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
        base = unwrap_peft(model)
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
            if in_backward():  # a checkpointed layer recomputed in backward: already counted
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
        return {layer: [int(c) for c in counts.cpu()] for layer, counts in sorted(self.counts[phase].items(), key=layer_key)}

    def report(self) -> dict[str, Any]:
        """``{"train": {"layers": {layer: [count per expert]}, "summary": {...}}, "eval": {...}}``."""
        return {phase: {"layers": (layers := self.phase_counts(phase)),
                        "summary": summarise(layers, self.top_k, self.num_experts)} for phase in PHASES}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


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
