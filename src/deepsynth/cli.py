"""``deepsynth`` command line: a thin shell over the library functions."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from deepsynth.training.errors import ConfigError


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

    rec = recommend(args.num_samples, model=args.model)
    if args.json:
        _print_json(rec.to_dict())
        return 0
    print(f"Recommended preset for {rec.num_samples} samples on {rec.model}: {rec.preset_name}\n")
    lora = rec.lora_config
    rows = [
        ("LoRA rank / alpha / dropout", f"{lora['rank']} / {lora['alpha']} / {lora['dropout']}"),
        ("LoRA targets", lora["target_modules"]),
        *[(key, value) for key, value in rec.training_config.items()],
        ("forward/backward steps", rec.estimates["total_steps"]),
        ("optimizer updates", rec.estimates["effective_updates"]),
        ("trainable parameters (exact)", rec.estimates["trainable_params"]),
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepsynth", description="LoRA fine-tuning of DeepSeek-OCR-family models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the LoRA presets")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("recommend", help="recommend a preset and settings for a dataset size")
    p.add_argument("--num-samples", type=int, required=True, help="number of training samples")
    p.add_argument("--model", default=None, help="model name or directory (default: the embedded model)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("inspect", help="show resolved LoRA targets and exact trainable parameters")
    p.add_argument("--model", default=None, help="model name or directory (default: the embedded model)")
    p.add_argument("--preset", required=True, help="preset name (see `deepsynth presets`)")
    p.add_argument("--include-routed-experts", action="store_true", help="also adapt every routed expert")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deepsynth`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
