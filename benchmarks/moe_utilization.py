"""Expert utilization with and without expert dropout (and optionally the router aux loss).

Trains the embedded tiny DeepSeek-OCR-2 (8 routed experts, top-2, 3 MoE layers) on the bundled
French samples with the same settings for every expert-dropout rate and seed, and reports what
DeepSynth's telemetry recorded (``metrics.json`` → ``expert_utilization``):

* ``train H/Hmax``: mean over MoE layers of the entropy of the experts' shares of token slots in
  the training forwards, divided by ln(8) (1 = perfectly balanced);
* ``eval H/Hmax``: the same for the forwards after training, in eval mode (no expert dropout):
  final held-out loss and generation;
* ``max share``: the largest share of one expert in one layer; ``unused``: (layer, expert) pairs
  that received no token.

    python benchmarks/moe_utilization.py --rates 0 0.25 0.5 --seeds 0 1 2 --epochs 10 --samples 8

Prints a Markdown table (pasted in docs/moe.md) and, with ``--json``, writes every run's numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.25, 0.5], help="expert_dropout_rate values")
    parser.add_argument("--aux", type=float, nargs="+", default=[0.0], help="router_aux_loss_coef values")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="router_focused")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=8, help="training samples (bundled set: 54)")
    parser.add_argument("--eval-samples", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (tiny model: 1 is fastest)")
    parser.add_argument("--json", help="write every run's numbers to this file")
    return parser.parse_args(argv)


def run_one(args: argparse.Namespace, rate: float, aux: float, seed: int, root: Path) -> dict[str, Any]:
    from deepsynth.training.config import TrainerConfig
    from deepsynth.training.production_trainer import UnifiedProductionTrainer

    config = TrainerConfig.from_dict(dict(
        output_dir=str(root / f"rate{rate}-aux{aux}-seed{seed}"), preset=args.preset, seed=seed,
        batch_size=1, num_epochs=args.epochs, gradient_accumulation_steps=args.accumulation,
        max_train_samples=args.samples, max_eval_samples=args.eval_samples, max_new_tokens=args.max_new_tokens,
        learning_rate=args.lr, scheduler_type="constant", checkpoint_every_updates=10**6,
        resume_from_checkpoint="never", expert_dropout_rate=rate, router_aux_loss_coef=aux,
    ))
    started = time.perf_counter()
    metrics, _ = UnifiedProductionTrainer(config).train()
    utilization = metrics["expert_utilization"]
    row: dict[str, Any] = {"expert_dropout_rate": rate, "router_aux_loss_coef": aux, "seed": seed,
                           "seconds": round(time.perf_counter() - started, 1),
                           "train_loss": metrics["train"]["train_loss"], "eval_loss_after": metrics["eval"]["after"]["loss"],
                           "withheld_fraction": metrics["moe"]["expert_dropout_withheld_fraction"],
                           "aux_loss_mean": metrics["moe"]["aux_loss_mean"]}
    for phase in ("train", "eval"):
        summary = utilization[phase]["summary"]
        row[f"{phase}_tokens"] = summary["tokens"]
        row[f"{phase}_normalized_entropy"] = summary["mean_normalized_entropy"]
        row[f"{phase}_max_share"] = summary["max_share"]
        row[f"{phase}_unused"] = summary["unused_experts"]
    return row


def mean_sd(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    header = ("| expert dropout | aux coef | withheld | train H/Hmax | eval H/Hmax | train max share | "
              "eval max share | unused (train/eval) | eval loss after |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    groups: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["expert_dropout_rate"], row["router_aux_loss_coef"]), []).append(row)
    for (rate, aux), group in groups.items():
        withheld = [r["withheld_fraction"] for r in group if r["withheld_fraction"] is not None]
        lines.append("| " + " | ".join([
            f"{rate:g}", f"{aux:g}", mean_sd(withheld) if withheld else "—",
            mean_sd([r["train_normalized_entropy"] for r in group]),
            mean_sd([r["eval_normalized_entropy"] for r in group]),
            mean_sd([r["train_max_share"] for r in group]),
            mean_sd([r["eval_max_share"] for r in group]),
            f"{sum(r['train_unused'] for r in group)}/{sum(r['eval_unused'] for r in group)}",
            mean_sd([r["eval_loss_after"] for r in group]),
        ]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    from deepsynth.models import tiny

    torch.set_num_threads(args.threads)
    logging.getLogger("deepsynth").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    rows = []
    with tempfile.TemporaryDirectory(prefix="moe-utilization-") as root:
        for aux in args.aux:
            for rate in args.rates:
                for seed in args.seeds:
                    row = run_one(args, rate, aux, seed, Path(root))
                    print(json.dumps(row), file=sys.stderr)
                    rows.append(row)
    weights = "shipped pretrained checkpoint" if tiny.shipped_checkpoint() else "seeded random init"
    print(f"embedded model ({weights}), preset {args.preset}, {args.samples} samples × {args.epochs} epochs, "
          f"accumulation {args.accumulation}, lr {args.lr}, seeds {args.seeds}, torch {torch.__version__}\n")
    print(table(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "weights": weights, "runs": rows}, indent=2),
                                   encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
