"""``deepsynth train``: the settings the flags make, the run plan, the run and its report."""

from __future__ import annotations

import argparse
import os
from typing import Any

from deepsynth.cli.flags import flag_overrides, learning_rates_choice, train_flags
from deepsynth.cli.formatting import metrics_table
from deepsynth.training.boundary import config_from_request
from deepsynth.training.errors import ConfigError


def train_config(args: argparse.Namespace, overrides: dict[str, Any]):
    """(config, whether to apply the recommendation, where the settings come from): the CLI's rule.

    ``--config`` / ``--preset`` / ``--auto``: as given. ``--data`` alone: planned for the data as with
    ``--auto``. Nothing: the README's demonstration on the bundled documents. Flags win throughout.
    """
    from deepsynth.training.plan import DEMONSTRATION

    if args.config or args.preset or args.auto:
        config = config_from_request(overrides, source=args.config, preset=args.preset)
        parts = [f"settings from {args.config}" if args.config else "the default settings",
                 f"LoRA preset {args.preset}" if args.preset else "",
                 "recommended for the data (--auto)" if args.auto else "", "your flags" if overrides else ""]
        return config, args.auto, ", then ".join(part for part in parts if part)
    if overrides.get("data_path"):
        return (config_from_request(overrides), True,
                "settings recommended for the data (--data without --config or --preset plans as --auto does)")
    return (config_from_request(overrides, source=DEMONSTRATION), False,
            "the README's demonstration on the bundled documents (no --data, --config or --preset; the settings of "
            "examples/quickstart.yaml). For your documents: deepsynth train --data FILE")


def processes() -> tuple[int, bool]:
    """(world size, whether this is the main process): under ``accelerate launch`` rank 0 alone prints."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.num_processes, state.is_main_process


def plan_train(args: argparse.Namespace):
    """The run plan of ``deepsynth train`` with these arguments (deepsynth.training.plan.plan_run)."""
    from deepsynth.training.plan import plan_run

    overrides = flag_overrides(args)
    config, recommended, origin = train_config(args, overrides)
    if config.column_mapping and not (config.data_path or config.eval_data_path):
        # It would be silently ignored: the bundled samples already have 'text' and 'summary'.
        raise ConfigError("--column-mapping" if "column_mapping" in overrides else "column_mapping",
                          config.column_mapping,
                          "--data FILE (or data_path in --config) with it: a column mapping applies to your own data")
    world_size, _ = processes()
    names = {info.name: flag for flag, info in train_flags().items()}
    names.update(learning_rates="--guide-learning-rates",
                 recommend_settings="--auto (or --data without --config or --preset)")
    return plan_run(config, recommend_settings=recommended, keep=overrides, world_size=world_size, names=names,
                    origin=origin, learning_rates=learning_rates_choice(args))


def cmd_train(args: argparse.Namespace) -> int:
    plan = None
    try:
        plan = plan_train(args)
        _check_output_dir(args, plan.config.output_dir)
        return _train(args, plan)
    except BaseException as error:
        # Watchers (the web job runner) read why the run failed from progress.jsonl, never from our
        # printed lines: record it there when the run folder exists (none is created for bad input).
        folder = getattr(args, "output_dir", None) or (plan.config.output_dir if plan is not None else None)
        if folder and os.path.isdir(folder) and processes()[1]:  # (isdir: False for a name too long)
            from deepsynth.training.progress import record_error_in

            record_error_in(folder, error)
        raise


def _check_output_dir(args: argparse.Namespace, output_dir: str) -> None:
    """The run folder can be made (not a file, not under one): checked before the model loads."""
    from deepsynth.paths import check_output_dir

    check_output_dir(output_dir, "--output-dir" if getattr(args, "output_dir", None) else "output_dir")


def _train(args: argparse.Namespace, plan) -> int:
    from deepsynth.training.production_trainer import UnifiedProductionTrainer

    if processes()[1]:
        print(plan.text() + "\n", flush=True)
    if args.dry_run:
        return 0
    metrics, paths = UnifiedProductionTrainer.from_plan(plan).train()  # the data planned is the data run
    if not metrics:
        return 0  # a non-main process of a distributed run: rank 0 reports and writes
    print()
    print(metrics_table(metrics))
    print(f"\n{metrics['optimizer_updates']} optimizer updates ({metrics['estimated_updates']} estimated), "
          f"{metrics['trainable_params']['total']:,} trainable parameters, "
          f"{metrics['train']['runtime_seconds']:.1f} s of training")
    print(f"adapter written to {paths['adapter']}")
    return 0
