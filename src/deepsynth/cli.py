"""``deepsynth`` command line: a thin shell over the library functions."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from deepsynth.training.errors import ConfigError, DiskFullError


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    return str(value)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# --- commands -------------------------------------------------------------------------------------

def cmd_presets(args: argparse.Namespace) -> int:
    from deepsynth.training.lora_config import LORA_PRESETS, PRESET_DESCRIPTIONS

    if args.json:
        _print_json({name: preset.to_dict() for name, preset in LORA_PRESETS.items()})
        return 0
    rows = [
        (name, p.rank, p.alpha, p.dropout, p.target_modules, p.modules_to_save, PRESET_DESCRIPTIONS[name])
        for name, p in LORA_PRESETS.items()
    ]
    print(_table(rows, ("preset", "rank", "alpha", "dropout", "targets", "full-trained", "use")))
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from deepsynth.training.recommend import recommend

    rec = recommend(args.num_samples, model=args.model, calibrate=args.calibrate, num_train_tokens=args.train_tokens,
                    has_eval_data=not args.no_eval_data, world_size=args.world_size)
    if args.json:
        _print_json(rec.to_dict())
        return 0
    evaluation = rec.evaluation
    split = (f" ({evaluation['train_samples']} trained on, {evaluation['holdout_samples']} held out for evaluation)"
             if evaluation["holdout_samples"] else "")
    print(f"Recommended preset for {rec.num_samples} samples{split} on {rec.model}: {rec.preset_name}\n")
    lora = rec.lora_config
    rows = [
        ("LoRA rank / alpha / dropout", f"{lora['rank']} / {lora['alpha']} / {lora['dropout']}"),
        ("LoRA targets", lora["target_modules"]),
        *[(key, value) for key, value in rec.training_config.items()],
        ("forward/backward steps", rec.estimates["total_steps"]),
        ("optimizer updates", rec.estimates["effective_updates"]),
        ("warmup updates (of this run)", rec.estimates["warmup_steps"]),
        ("trainable parameters (exact)", rec.estimates["trainable_params"]),
        ("training target tokens", f"{rec.estimates['train_tokens']:,}"
         + (" (assumed; give --train-tokens)" if rec.estimates["train_tokens_assumed"] else "")),
        ("parameters per target token", f"{rec.estimates['params_per_train_token']:,.1f}"),
        ("evaluated on", "the training samples (no held-out data)" if evaluation["eval_on_training_data"]
         else f"{evaluation['holdout_samples']} held-out training samples" if evaluation["holdout_samples"]
         else "the eval data"),
        ("estimated time", "unknown (use --calibrate)" if rec.estimates["estimated_time_minutes"] is None
         else f"{rec.estimates['estimated_time_minutes']:.1f} min"),
    ]
    print(_table(rows, ("setting", "value")))
    for warning in rec.warnings:
        print(f"warning: {warning}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from deepsynth.training.lora_config import get_lora_preset
    from deepsynth.training.targets import count_trainable_params

    lora = get_lora_preset(args.preset)
    if args.include_routed_experts:
        lora.include_routed_experts = True
    report = count_trainable_params(args.model, lora)
    if args.json:
        _print_json(report.to_dict())
        return 0
    targets = report.targets
    print(f"Model {report.model} ({report.family}), preset {args.preset}: rank {lora.rank}, alpha {lora.alpha}\n")
    print(_table([(name, hits) for name, hits in targets.matched.items()], ("target", "resolves to (per decoder layer)")))
    print()
    rows = [(group, count) for group, count in report.by_group.items()]
    rows.append(("total trainable", report.trainable))
    rows.append(("model parameters", report.total_params))
    print(_table(rows, ("group", "trainable parameters")))
    print(f"\nrouter: {targets.router_mode or 'frozen'}")
    if targets.unmatched:
        print(f"unmatched (ignored): {', '.join(targets.unmatched)}")
    for warning in targets.warnings:
        print(f"warning: {warning}")
    return 0


# Flags of `train` that map one-to-one onto TrainerConfig fields: flag → (field, type).
TRAIN_FLAGS: dict[str, tuple[str, type]] = {
    "--model": ("model_name", str),
    "--output-dir": ("output_dir", str),
    "--data": ("data_path", str),
    "--eval-data": ("eval_data_path", str),
    "--epochs": ("num_epochs", int),
    "--batch-size": ("batch_size", int),
    "--grad-accum": ("gradient_accumulation_steps", int),
    "--learning-rate": ("learning_rate", float),
    "--warmup-steps": ("warmup_steps", int),
    "--scheduler": ("scheduler_type", str),
    "--max-train-samples": ("max_train_samples", int),
    "--max-eval-samples": ("max_eval_samples", int),
    "--max-length": ("max_length", int),
    "--instruction": ("instruction", str),
    "--seed": ("seed", int),
    "--resume": ("resume_from_checkpoint", str),
    "--eval-every": ("eval_every_updates", int),
    "--early-stopping-patience": ("early_stopping_patience", int),
    "--max-new-tokens": ("max_new_tokens", int),
    "--hub-model-id": ("hub_model_id", str),
    "--gate-dropout": ("gate_dropout_rate", float),
    "--expert-dropout": ("expert_dropout_rate", float),
    "--expert-dropout-min-keep": ("expert_dropout_min_keep", int),
    "--router-aux-loss-coef": ("router_aux_loss_coef", float),
}


def _train_config(args: argparse.Namespace):
    from deepsynth.training.config import TrainerConfig

    config = TrainerConfig.from_file(args.config) if args.config else TrainerConfig()
    data = config.to_dict()
    for flag, (field, _) in TRAIN_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            if field in data["optimizer"]:
                data["optimizer"][field] = value
                if field == "warmup_steps":
                    data["optimizer"]["warmup_ratio"] = None
            else:
                data[field] = value
    if args.column_mapping:
        data["column_mapping"] = dict(pair.split("=", 1) for pair in args.column_mapping.split(","))
    if args.push_to_hub:
        data["push_to_hub"] = True
    config = TrainerConfig.from_dict(data)
    if args.preset:
        config = config.with_preset(args.preset)
    return config


def _metrics_table(metrics: dict[str, Any]) -> str:
    before, after = metrics["eval"]["before"], metrics["eval"]["after"]
    rows = [(name, f"{before[name]:.4f}", f"{after[name]:.4f}", f"{after[name] - before[name]:+.4f}") for name in before]
    where = "training samples (no held-out data)" if metrics["eval_on_training_data"] else "held-out samples"
    return f"Before/after on {metrics['num_eval_samples']} {where}:\n" + _table(rows, ("metric", "base", "adapted", "change"))


def _auto_configure(config):
    """``config`` with the recommendation for its training data applied (``--auto``).

    The recommendation is told whether the data has eval data (an eval file or an ``eval`` split;
    without, it holds samples out) and the real count of target tokens (the tokenizer only is loaded).
    """
    from deepsynth.models.loading import ModelLoadError
    from deepsynth.training.config import TrainerConfig
    from deepsynth.training.production_trainer import UnifiedProductionTrainer, _world_size
    from deepsynth.training.recommend import count_target_tokens, recommend

    # All the training rows, before any hold-out a config file may already ask for.
    unsplit = TrainerConfig.from_dict({**config.to_dict(), "holdout_samples": None})
    data = UnifiedProductionTrainer(unsplit).prepare_data()
    num_samples = len(data.train)
    try:
        tokens = count_target_tokens(config.model_name, data.train["summary"])
    except ModelLoadError as error:
        print(f"--auto: target tokens not counted ({error}); assuming a typical summary length")
        tokens = None
    rec = recommend(num_samples, model=config.model_name, world_size=_world_size(), num_train_tokens=tokens,
                    has_eval_data=not data.eval_on_training_data)
    held = rec.evaluation["holdout_samples"]
    counted = f"{tokens:,} target tokens" if tokens is not None else "target tokens assumed"
    print(f"--auto: {num_samples} training samples ({counted}){f', {held} held out for evaluation' if held else ''} → "
          f"preset {rec.preset_name}, {rec.estimates['effective_updates']} optimizer updates")
    for warning in rec.warnings:
        print(f"warning: {warning}")
    return rec.apply(config)


def cmd_train(args: argparse.Namespace) -> int:
    from deepsynth.training.production_trainer import UnifiedProductionTrainer

    config = _train_config(args)
    if args.auto:
        config = _auto_configure(config)
    metrics, paths = UnifiedProductionTrainer(config).train()
    if not metrics:
        return 0  # a non-main process of a distributed run: rank 0 reports and writes
    print()
    print(_metrics_table(metrics))
    print(f"\n{metrics['optimizer_updates']} optimizer updates ({metrics['estimated_updates']} estimated), "
          f"{metrics['trainable_params']['total']:,} trainable parameters, "
          f"{metrics['train']['runtime_seconds']:.1f} s of training")
    print(f"adapter written to {paths['adapter']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from deepsynth.evaluation.compare import evaluate_adapter

    metrics = evaluate_adapter(args.adapter, args.data, max_samples=args.max_eval_samples)
    if args.json:
        _print_json(metrics)
    else:
        print(_metrics_table(metrics))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from deepsynth.evaluation.compare import generate_from_adapter

    print(generate_from_adapter(args.adapter, image=args.image, text=args.text, max_new_tokens=args.max_new_tokens))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from deepsynth.models.adapters import export_merged

    print(f"merged model written to {export_merged(args.adapter, args.merge)}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from deepsynth.publishing import PushError, push_adapter

    try:
        report = push_adapter(args.adapter, args.repo_id, private=args.private, backend=args.backend)
    except PushError as error:
        print(f"error: {error}", file=sys.stderr)
        report = getattr(error, "report", None)
        if report is not None:
            _print_json(report.to_dict())
        return 1
    _print_json(report.to_dict())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepsynth", description="LoRA fine-tuning of DeepSeek-OCR-family models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the LoRA presets")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("recommend", help="recommend a preset and settings for a dataset size")
    p.add_argument("--num-samples", type=int, required=True, help="number of training samples")
    p.add_argument("--model", default=None, help="model name or directory (default: the embedded model)")
    p.add_argument("--calibrate", action="store_true", help="time a few real steps here to estimate the run's duration")
    p.add_argument("--no-eval-data", action="store_true",
                   help="the samples are all the data (no eval file or split): hold some out for evaluation")
    p.add_argument("--train-tokens", type=int, default=None, metavar="N",
                   help="supervised target tokens of the samples (default: assume 90 per sample)")
    p.add_argument("--world-size", type=int, default=1, metavar="N",
                   help="training processes (data-parallel): each sees 1/N of the samples per epoch")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("inspect", help="show resolved LoRA targets and exact trainable parameters")
    p.add_argument("--model", default=None, help="model name or directory (default: the embedded model)")
    p.add_argument("--preset", required=True, help="preset name (see `deepsynth presets`)")
    p.add_argument("--include-routed-experts", action="store_true", help="also adapt every routed expert")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("train", help="fine-tune with LoRA (default: embedded model, bundled French samples)")
    p.add_argument("--config", help="YAML/JSON file of TrainerConfig fields (flags override it)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--preset", help="LoRA preset (see `deepsynth presets`)")
    group.add_argument("--auto", action="store_true", help="apply `recommend` for the dataset's size")
    for flag, (field, kind) in TRAIN_FLAGS.items():
        p.add_argument(flag, type=kind, default=None, help=f"TrainerConfig.{field}")
    p.add_argument("--column-mapping", help="canonical=yours pairs, e.g. summary=target,text=document")
    p.add_argument("--push-to-hub", action="store_true", help="push the adapter to --hub-model-id when done")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="before/after metrics of an adapter on a dataset")
    p.add_argument("--adapter", required=True, help="adapter folder written by `deepsynth train`")
    p.add_argument("--data", default=None, help="data file or folder (default: bundled eval samples)")
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="generate with an adapter")
    p.add_argument("--adapter", required=True, help="adapter folder written by `deepsynth train`")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="page image file")
    source.add_argument("--text", help="document text (rendered to a page for OCR models)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("export", help="merge an adapter into its base model")
    p.add_argument("--adapter", required=True, help="adapter folder written by `deepsynth train`")
    p.add_argument("--merge", required=True, metavar="OUT", help="folder for the merged model")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("push", help="push an adapter folder to the Hugging Face Hub")
    p.add_argument("--adapter", required=True, help="adapter folder written by `deepsynth train`")
    p.add_argument("--repo-id", required=True, help="ORG/NAME")
    p.add_argument("--private", action="store_true")
    p.add_argument("--backend", choices=("http", "git"), default=None, help="default: $DS_PUSH_BACKEND or http")
    p.set_defaults(func=cmd_push)

    from deepsynth.web.server import add_serve_arguments, run_serve

    p = sub.add_parser("serve", help="run the web UI and API (loopback by default)")
    add_serve_arguments(p)
    p.set_defaults(func=run_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deepsynth`` console script."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parser = build_parser()
    args = parser.parse_args(argv)
    from deepsynth.publishing import PushError

    try:
        return args.func(args)
    except PushError as error:  # the run's files are written; the upload is what failed
        print(f"error: push failed: {error}", file=sys.stderr)
        return 1
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except DiskFullError as error:  # not bad input: the run failed; earlier checkpoints are kept
        print(f"\nerror: {error}", file=sys.stderr)  # on its own line, after an unfinished progress bar
        return 1


if __name__ == "__main__":
    sys.exit(main())
