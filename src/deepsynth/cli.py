"""``deepsynth`` command line: a thin shell over the library functions."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
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
                    has_eval_data=not args.no_eval_data, world_size=args.world_size, image_mode=args.image_mode,
                    learning_rates=_learning_rates(args))
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
    if rec.vision_tokens is not None:
        rows.append((f"vision tokens per page ({rec.vision_tokens['mode']} mode)", rec.vision_tokens["text"]))
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
    quantized = _quantized_share(args.model, lora.quantization)
    pages = _vision_tokens(args.model, args.image_mode)
    if args.json:
        _print_json({**report.to_dict(), "quantization": quantized,
                     "vision_tokens": pages.to_dict() if pages else None})
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
    if quantized:
        print(f"base weights ({quantized['method']}): {quantized['description']}")
    if pages is not None:
        print(f"vision tokens per page ({pages.mode.name} mode): {pages.text()}")
    if targets.unmatched:
        print(f"unmatched (ignored): {', '.join(targets.unmatched)}")
    for warning in targets.warnings:
        print(f"warning: {warning}")
    return 0


def _vision_tokens(model: str | None, image_mode: str | None):
    """Vision tokens per page of ``model`` in ``image_mode`` (None for a text model); no weights are read."""
    from deepsynth.models.image_modes import mode_for_model, vision_tokens_per_page

    resolved, mode = mode_for_model(model, image_mode)
    return None if mode is None else vision_tokens_per_page(resolved.family, mode, resolved.config)


# --- train: flags generated from TrainerConfig's field metadata ------------------------------------

def train_flags() -> dict[str, Any]:
    """Flag → FieldInfo for every TrainerConfig field (optimizer fields flat), as TRL's TrlParser
    derives flags from dataclasses: the field's metadata ``flag`` or ``--field-name``. The Hub token
    has none: huggingface_hub reads it from HF_TOKEN, never from a command line (shell history, ps)."""
    from deepsynth.training.config import SECRET_FIELDS, config_fields

    return {info.metadata.get("flag") or "--" + info.name.replace("_", "-"): info
            for info in config_fields() if info.name not in SECRET_FIELDS}


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _pairs(text: str) -> dict[str, str]:
    pairs = [pair.split("=", 1) for pair in text.split(",") if pair.strip()]
    if not all(len(pair) == 2 and pair[0].strip() and pair[1].strip() for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected name=value pairs separated by commas, got {text!r}")
    return {key.strip(): value.strip() for key, value in pairs}


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


_FLAG_TYPES = {"int": int, "float": float, "number": _number, "str": str, "list": _names, "dict": _pairs}
_METAVARS = {"list": "A,B", "dict": "K=V,K=V", "int": "N", "float": "X", "number": "X"}


def _add_train_flags(parser: argparse.ArgumentParser, preset_group: argparse._MutuallyExclusiveGroup) -> None:
    for flag, info in train_flags().items():
        target = preset_group if info.name == "preset" else parser
        help_text = info.help.replace("%", "%%")
        if info.kind == "bool":
            target.add_argument(flag, dest=info.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            target.add_argument(flag, dest=info.name, type=_FLAG_TYPES[info.kind], default=None,
                                metavar=info.metadata.get("metavar") or _METAVARS.get(info.kind, "VALUE"),
                                help=help_text)


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainerConfig fields the flags given on the command line set (field name → value)."""
    values = {info.name: getattr(args, info.name, None) for info in train_flags().values()}
    return {name: value for name, value in values.items() if value is not None and name != "preset"}


def _train_config(args: argparse.Namespace, overrides: dict[str, Any]):
    """(config, whether to apply the recommendation, where the settings come from): the CLI's rule.

    ``--config`` / ``--preset`` / ``--auto``: as given. ``--data`` alone: planned for the data as with
    ``--auto``. Nothing: the README's demonstration on the bundled documents. Flags win throughout.
    """
    from deepsynth.training.config import build_config
    from deepsynth.training.plan import DEMONSTRATION

    if args.config or args.preset or args.auto:
        config = build_config(args.config, args.preset, overrides)
        parts = [f"settings from {args.config}" if args.config else "the default settings",
                 f"LoRA preset {args.preset}" if args.preset else "",
                 "recommended for the data (--auto)" if args.auto else "", "your flags" if overrides else ""]
        return config, args.auto, ", then ".join(part for part in parts if part)
    if overrides.get("data_path"):
        return (build_config(None, None, overrides), True,
                "settings recommended for the data (--data without --config or --preset plans as --auto does)")
    return (build_config(DEMONSTRATION, None, overrides), False,
            "the README's demonstration on the bundled documents (no --data, --config or --preset; the settings of "
            "examples/quickstart.yaml). For your documents: deepsynth train --data FILE")


def _processes() -> tuple[int, bool]:
    """(world size, whether this is the main process): under ``accelerate launch`` rank 0 alone prints."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.num_processes, state.is_main_process


def plan_train(args: argparse.Namespace):
    """The run plan of ``deepsynth train`` with these arguments (deepsynth.training.plan.plan_run)."""
    from deepsynth.training.plan import plan_run

    overrides = flag_overrides(args)
    config, recommended, origin = _train_config(args, overrides)
    if config.column_mapping and not (config.data_path or config.eval_data_path):
        # It would be silently ignored: the bundled samples already have 'text' and 'summary'.
        raise ConfigError("--column-mapping" if "column_mapping" in overrides else "column_mapping",
                          config.column_mapping,
                          "--data FILE (or data_path in --config) with it: a column mapping applies to your own data")
    world_size, _ = _processes()
    names = {info.name: flag for flag, info in train_flags().items()}
    names.update(learning_rates="--guide-learning-rates",
                 recommend_settings="--auto (or --data without --config or --preset)")
    return plan_run(config, recommend_settings=recommended, keep=overrides, world_size=world_size, names=names,
                    origin=origin, learning_rates=_learning_rates(args))


def _metrics_table(metrics: dict[str, Any]) -> str:
    before, after = metrics["eval"]["before"], metrics["eval"]["after"]
    rows = [(name, f"{before[name]:.4f}", f"{after[name]:.4f}", f"{after[name] - before[name]:+.4f}") for name in before]
    where = "training samples (no held-out data)" if metrics["eval_on_training_data"] else "held-out samples"
    scored = f"Scored: {metrics['scored_rows']}\n" if metrics.get("scored_rows") else ""
    table = f"{scored}Before/after on {metrics['num_eval_samples']} {where}:\n" + _table(
        rows, ("metric", "base", "adapted", "change"))
    if metrics.get("text_normalisation"):  # transcription: say how CER and WER compared the texts
        table += f"\nCER and WER on normalised text: {metrics['text_normalisation']}"
    return table


def _samples_text(samples: Sequence[dict[str, Any]]) -> str:
    """The shown generations of an evaluation, each with how it ended (an empty one says so)."""
    lines = [f"First {len(samples)} samples (how each generation ended in brackets):"]
    for number, sample in enumerate(samples, 1):
        lines.append(f"{number}. reference: {_short(sample['reference'])}")
        for key, label in (("before", "base"), ("after", "adapted")):
            stop = sample.get(f"{key}_stop")
            lines.append(f"   {label}: {_short(sample[key]) or '(nothing)'}" + (f" [{stop}]" if stop else ""))
    return "\n".join(lines)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
        if folder and os.path.isdir(folder) and _processes()[1]:  # (isdir: False for a name too long)
            from deepsynth.training.progress import record_error_in

            record_error_in(folder, error)
        raise


def _check_output_dir(args: argparse.Namespace, output_dir: str) -> None:
    """The run folder can be made (not a file, not under one): checked before the model loads."""
    from deepsynth.paths import check_output_dir

    check_output_dir(output_dir, "--output-dir" if getattr(args, "output_dir", None) else "output_dir")


def _train(args: argparse.Namespace, plan) -> int:
    from deepsynth.models.quantization import require_bitsandbytes

    require_bitsandbytes(plan.config.lora_quantization)  # before the trainer's heavy imports: fail at once
    from deepsynth.training.production_trainer import UnifiedProductionTrainer

    if _processes()[1]:
        print(plan.text() + "\n", flush=True)
    if args.dry_run:
        return 0
    metrics, paths = UnifiedProductionTrainer(plan.config).train()
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
    from deepsynth.evaluation.adapter_folder import evaluate_adapter

    metrics = evaluate_adapter(args.adapter, args.data, max_samples=args.max_eval_samples, image_mode=args.image_mode,
                               ignore_case=args.ignore_case, ignore_punctuation=args.ignore_punctuation)
    if args.json:
        _print_json(metrics)
    else:
        if metrics.get("image_mode_read"):
            print(f"Pages read in image mode {metrics['image_mode_read']}")
        print(_metrics_table(metrics))
        if metrics["samples"]:
            print("\n" + _samples_text(metrics["samples"]))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from deepsynth.evaluation.adapter_folder import generate_from_adapter, generate_from_model

    generate = generate_from_adapter if args.adapter else generate_from_model
    generation = generate(args.adapter or args.model, image=args.image, text=args.text,
                          max_new_tokens=args.max_new_tokens, image_mode=args.image_mode)
    if args.json:
        _print_json(generation.to_dict())
        return 0
    if not generation.empty:
        print(generation)
    # On stderr, so stdout stays the text alone; an empty generation is never just a blank line.
    if generation.image_mode:
        print(f"[image mode {generation.image_mode}]", file=sys.stderr)
    print(f"[{generation.report()}]", file=sys.stderr)
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from deepsynth.labeling import draft_labels

    report = draft_labels(args.data, args.out, adapter=args.adapter, model=args.model, instruction=args.instruction,
                          batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    skipped = f" ({report.skipped} already in the file, skipped)" if report.skipped else ""
    print(f"{report.drafted} of {report.pages} pages drafted{skipped}: {report.out}")
    for line in report.warnings():  # empty, guard-ended and cut drafts, each with how its generation ended
        print(line)
    print(f"Correct each line's 'summary', then: deepsynth train --data {report.out}")
    return 0


def _quantized_share(model: str | None, quantization: str | None) -> dict[str, Any] | None:
    """What a QLoRA preset holds in 4/8 bits, counted on the meta device as the loader would quantize."""
    if not quantization:
        return None
    from deepsynth.models.quantization import estimate_quantization
    from deepsynth.models.resolver import resolve_config

    resolved = resolve_config(model)
    return estimate_quantization(resolved.build_on_meta(), resolved.family, quantization)


def cmd_export(args: argparse.Namespace) -> int:
    from deepsynth.evaluation.export import export_adapter, export_merged

    if args.merge:
        report = export_merged(args.adapter, args.merge, max_shard_size=args.max_shard_size, dtype=args.dtype)
    else:
        report = export_adapter(args.adapter, args.out)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        _print_json(report.to_dict())
        return 0
    if report.merged:
        through = f", merged through the dequantized {report.dequantized_base} base" if report.dequantized_base else ""
        print(f"merged model written to {report.output_dir}: {report.layout} layout, {report.tensors:,} tensors in "
              f"{len(report.shards)} {report.dtype} shard(s){through}")
    else:
        print(f"adapter (unmerged) written to {report.output_dir}")
    for note in report.notes:
        print(f"note: {note}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from deepsynth.publishing import PushArgumentError, PushError, push_adapter

    try:
        report = push_adapter(args.adapter, args.repo_id, private=args.private, backend=args.backend)
    except PushError as error:
        print(f"error: {error}", file=sys.stderr)
        report = getattr(error, "report", None)
        if report is not None:
            _print_json(report.to_dict())
        return 2 if isinstance(error, PushArgumentError) else 1  # 2: bad input, nothing was sent
    _print_json(report.to_dict())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepsynth", description="LoRA fine-tuning of DeepSeek-OCR-family models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_presets, _add_recommend, _add_inspect, _add_train, _add_eval, _add_generate, _add_label,
                _add_export, _add_push, _add_serve):
        add(sub)
    return parser


def _add_presets(sub: Any) -> None:
    p = sub.add_parser("presets", help="list the LoRA presets")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_presets)


def _add_recommend(sub: Any) -> None:
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
    _add_learning_rates_flag(p)
    _add_image_mode(p, "show vision tokens per page for this resolution mode (default: the model's own)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_recommend)


def _add_learning_rates_flag(p: argparse.ArgumentParser) -> None:
    """``--guide-learning-rates``, for recommend and train alike (read back by :func:`_learning_rates`)."""
    p.add_argument("--guide-learning-rates", action="store_true",
                   help="recommended settings with the design guide's learning rates instead of the ones our "
                        "full-length runs support (docs/quality.md)")


def _learning_rates(args: argparse.Namespace) -> str:
    """The ``learning_rates`` choice of recommend() and plan_run() the flags make."""
    return "guide" if args.guide_learning_rates else "evidence"


def _add_inspect(sub: Any) -> None:
    p = sub.add_parser("inspect", help="show resolved LoRA targets and exact trainable parameters")
    p.add_argument("--model", default=None, help="model name or directory (default: the embedded model)")
    p.add_argument("--preset", required=True, help="preset name (see `deepsynth presets`)")
    p.add_argument("--include-routed-experts", action="store_true", help="also adapt every routed expert")
    _add_image_mode(p, "show vision tokens per page for this resolution mode (default: the model's own)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train", help="fine-tune with LoRA (no arguments: the README's demonstration on the bundled documents)",
        description="Fine-tune with LoRA. Settings come from --config, then --preset, then the flags. With --data "
                    "and neither --config nor --preset, the settings are recommended for the data (as --auto); "
                    "with nothing, the README's demonstration runs. The plan is printed first.")
    p.add_argument("--config", help="YAML/JSON file of TrainerConfig fields (flags override it)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--auto", action="store_true", help="apply `recommend` for the dataset's size")
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop: nothing is trained or written")
    _add_learning_rates_flag(p)
    _add_train_flags(p, group)
    p.set_defaults(func=cmd_train)


def _add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="before/after metrics of an adapter on a dataset")
    p.add_argument("--adapter", required=True, help="adapter folder written by `deepsynth train`")
    p.add_argument("--data", default=None,
                   help="data file or folder: its rows marked split 'eval', or all its rows without a 'split' column "
                        "(default: the rows the adapter's run held out from training)")
    p.add_argument("--max-eval-samples", type=int, default=None)
    _add_image_mode(p, "read the pages in this resolution mode (default: the adapter's training mode)")
    p.add_argument("--ignore-case", action=argparse.BooleanOptionalAction, default=None,
                   help="transcription CER/WER ignore case (default: the adapter's training setting)")
    p.add_argument("--ignore-punctuation", action=argparse.BooleanOptionalAction, default=None,
                   help="transcription CER/WER ignore punctuation (default: the adapter's training setting)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_eval)


def _add_image_mode(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--image-mode", default=None, metavar="NAME",
                   help=f"{help_text}: tiny, small, base, large, gundam (DeepSeek-OCR); dynamic, base, small "
                        "(DeepSeek-OCR-2)")


def _add_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate with an adapter, or with a model (a merged export)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--adapter", help="adapter folder written by `deepsynth train`")
    which.add_argument("--model", help="model folder or name, e.g. a merged export (`deepsynth export --merge`)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="page image file, or a PDF page: report.pdf#page=2")
    source.add_argument("--text", help="document text (rendered to a page for OCR models)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    _add_image_mode(p, "read the page in this resolution mode (default: the adapter's training mode)")
    p.add_argument("--json", action="store_true", help="the text and how generation ended, as JSON")
    p.set_defaults(func=cmd_generate)


def _add_label(sub: Any) -> None:
    p = sub.add_parser(
        "label", help="draft targets for unlabelled pages (to correct, then train on)",
        description="Run the base model (or an adapter) over a folder of page images and PDFs, one PDF or one image, "
                    "and write one JSON line per page ({\"image\": ..., \"summary\": <draft>}) that train reads. "
                    "Re-running skips the pages the file already has.")
    p.add_argument("--data", required=True, help="folder of page images and/or PDFs, a PDF, or an image")
    p.add_argument("--out", required=True, help="drafts file (.jsonl); FOLDER/targets.jsonl makes it the folder's "
                                                "targets file")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--adapter", default=None, help="adapter folder: its base, instruction and limits")
    model.add_argument("--model", default=None, help="base model name or folder (default: the embedded model)")
    p.add_argument("--instruction", default=None,
                   help="prompt (default: the adapter's, i.e. its instruction or its task's, 'Free OCR.' for "
                        "--task transcribe; without an adapter the summary instruction; 'Free OCR.' drafts "
                        "transcriptions)")
    p.add_argument("--batch-size", type=int, default=4, metavar="N", help="pages generated at once (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="tokens per draft (default: the adapter's setting, else 96)")
    p.set_defaults(func=cmd_label)


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="export an adapter for serving: merged into its base (docs/serving.md)")
    p.add_argument("--adapter", required=True, help="adapter folder written by `deepsynth train`")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--merge", metavar="OUT", help="folder for the merged model (DeepSeek-OCR: its own layout)")
    target.add_argument("--out", metavar="OUT", help="folder for the adapter alone (unmerged; warns when it "
                                                     "cannot be served unmerged)")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard of a merged model (default 5GB)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                   help="dtype of the merged weights (default: the base checkpoint's own, bf16 for DeepSeek-OCR)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=cmd_export)


def _add_push(sub: Any) -> None:
    p = sub.add_parser("push", help="push an adapter folder to the Hugging Face Hub")
    p.add_argument("--adapter", required=True, help="adapter folder written by `deepsynth train`")
    p.add_argument("--repo-id", required=True, help="ORG/NAME")
    p.add_argument("--private", action="store_true")
    p.add_argument("--backend", choices=("http", "git"), default=None, help="default: $DS_PUSH_BACKEND or http")
    p.set_defaults(func=cmd_push)


def _add_serve(sub: Any) -> None:
    from deepsynth.web.server import add_serve_arguments, run_serve

    p = sub.add_parser("serve", help="run the web UI and API (loopback by default)")
    add_serve_arguments(p)
    p.set_defaults(func=run_serve)


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
    except OSError as error:
        return _report_disk_full(error, getattr(args, "output_dir", None))


def _report_disk_full(error: OSError, output_dir: str | None) -> int:
    """A full disk outside a save (the run folder's first files): one line, exit 1; any other OSError is raised."""
    import errno

    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        raise error
    where = f" writing {error.filename}" if error.filename else (f" in {output_dir}" if output_dir else "")
    print(f"\nerror: disk full{where}: {error.strerror}; nothing was trained: free some space and rerun the same "
          "command", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
