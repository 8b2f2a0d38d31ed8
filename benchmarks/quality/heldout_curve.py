"""Held-out loss along a full, unscaled recommended run (evidence for the early-stopping default).

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/quality/heldout_curve.py --n 3 --every 15 \
        --out benchmarks/quality/heldout_curve_tiny_n3.json

Runs ``recommend(n).apply(...)`` as is (no epoch scaling) on the embedded tiny model, with the
held-out loss evaluated every ``--every`` updates and no early stopping, and writes the training and
held-out loss history. ``--epochs`` overrides the recommended number of epochs (the smoke run uses 1).
"""
import argparse
import json
import shutil
import tempfile
import time

import torch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--every", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr-scale", type=float, default=1.0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=None, help="override the recommended epochs")
    parser.add_argument("--eval-samples", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import transformers

    transformers.logging.set_verbosity_error()
    from deepsynth.models.tiny import shipped_checkpoint
    from deepsynth.training.config import TrainerConfig
    from deepsynth.training.production_trainer import UnifiedProductionTrainer
    from deepsynth.training.recommend import recommend

    out_dir = tempfile.mkdtemp(prefix="dsq-curve-")
    rec = recommend(args.n)
    cfg = rec.apply(TrainerConfig(output_dir=out_dir, max_train_samples=args.n, max_eval_samples=args.eval_samples,
                                  max_new_tokens=args.max_new_tokens, seed=args.seed, resume_from_checkpoint="never",
                                  save_total_limit=1, checkpoint_every_updates=10**6))
    data = cfg.to_dict()
    data["eval_every_updates"] = args.every
    if args.epochs is not None:
        data["num_epochs"] = args.epochs
        data["early_stopping_patience"] = None
    data["optimizer"]["learning_rate"] *= args.lr_scale
    cfg = TrainerConfig.from_dict(data)
    started = time.perf_counter()
    try:
        metrics, _ = UnifiedProductionTrainer(cfg).train()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    result = {"n": args.n, "seed": args.seed, "preset": cfg.preset, "lr": cfg.optimizer.learning_rate,
              "weights": str(shipped_checkpoint()) if shipped_checkpoint() else "random-init embedded",
              "updates": metrics["optimizer_updates"], "wall_s": round(time.perf_counter() - started, 1),
              "before": metrics["eval"]["before"], "after": metrics["eval"]["after"],
              "history": metrics["history"]}
    with open(args.out, "w", encoding="utf-8") as stream:
        json.dump(result, stream, indent=1)
    evals = [(h["step"], round(h["eval_loss"], 4)) for h in metrics["history"] if "eval_loss" in h]
    print(f"{result['updates']} updates in {result['wall_s']} s; held-out loss: {evals}")


if __name__ == "__main__":
    main()
