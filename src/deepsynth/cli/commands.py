"""The handlers of every ``deepsynth`` command but ``train``: each calls one library function and prints it."""

from __future__ import annotations

import argparse
import sys

from deepsynth.cli.flags import learning_rates_choice
from deepsynth.cli.formatting import metrics_table, print_json, samples_text, table


def cmd_presets(args: argparse.Namespace) -> int:
    from deepsynth.training.lora_config import LORA_PRESETS, PRESET_DESCRIPTIONS

    if args.json:
        print_json({name: preset.to_dict() for name, preset in LORA_PRESETS.items()})
        return 0
    rows = [
        (name, p.rank, p.alpha, p.dropout, p.target_modules, p.modules_to_save, PRESET_DESCRIPTIONS[name])
        for name, p in LORA_PRESETS.items()
    ]
    print(table(rows, ("preset", "rank", "alpha", "dropout", "targets", "full-trained", "use")))
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from deepsynth.training.recommend import recommend

    rec = recommend(args.num_samples, model=args.model, calibrate=args.calibrate, num_train_tokens=args.train_tokens,
                    has_eval_data=not args.no_eval_data, world_size=args.world_size, image_mode=args.image_mode,
                    learning_rates=learning_rates_choice(args))
    if args.json:
        print_json(rec.to_dict())
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
    print(table(rows, ("setting", "value")))
    for warning in rec.warnings:
        print(f"warning: {warning}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from deepsynth.training.lora_config import get_lora_preset
    from deepsynth.training.model_facts import model_facts
    from deepsynth.training.targets import count_trainable_params

    lora = get_lora_preset(args.preset)
    if args.include_routed_experts:
        lora.include_routed_experts = True
    facts = model_facts(args.model, args.image_mode)  # the model resolved once, its pages' cost with it
    report = count_trainable_params(args.model, lora, resolved=facts.resolved)
    quantized = report.quantization
    pages = facts.vision_tokens
    if args.json:
        print_json({**report.to_dict(),
                    "vision_tokens": pages.to_dict() if pages else None})
        return 0
    targets = report.targets
    print(f"Model {report.model} ({report.family}), preset {args.preset}: rank {lora.rank}, alpha {lora.alpha}\n")
    print(table([(name, hits) for name, hits in targets.matched.items()], ("target", "resolves to (per decoder layer)")))
    print()
    rows = [(group, count) for group, count in report.by_group.items()]
    rows.append(("total trainable", report.trainable))
    rows.append(("model parameters", report.total_params))
    print(table(rows, ("group", "trainable parameters")))
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


def cmd_eval(args: argparse.Namespace) -> int:
    from deepsynth.evaluation.adapter_folder import evaluate_adapter

    metrics = evaluate_adapter(args.adapter, args.data, max_samples=args.max_eval_samples, image_mode=args.image_mode,
                               ignore_case=args.ignore_case, ignore_punctuation=args.ignore_punctuation)
    if args.json:
        print_json(metrics)
    else:
        if metrics.get("image_mode_read"):
            print(f"Pages read in image mode {metrics['image_mode_read']}")
        print(metrics_table(metrics))
        if metrics["samples"]:
            print("\n" + samples_text(metrics["samples"]))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from deepsynth.evaluation.adapter_folder import generate_from_adapter, generate_from_model

    generate = generate_from_adapter if args.adapter else generate_from_model
    generation = generate(args.adapter or args.model, image=args.image, text=args.text,
                          max_new_tokens=args.max_new_tokens, image_mode=args.image_mode)
    if args.json:
        print_json(generation.to_dict())
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


def cmd_export(args: argparse.Namespace) -> int:
    from deepsynth.evaluation.export import export_adapter, export_merged

    if args.merge:
        report = export_merged(args.adapter, args.merge, max_shard_size=args.max_shard_size, dtype=args.dtype)
    else:
        report = export_adapter(args.adapter, args.out)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print_json(report.to_dict())
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
    from deepsynth.publishing import PushError, push_adapter
    from deepsynth.training.boundary import describe_error

    try:
        report = push_adapter(args.adapter, args.repo_id, private=args.private, backend=args.backend)
    except PushError as error:  # what was uploaded and what failed, after the one error line
        described = describe_error(error)
        print(f"error: {described.message}", file=sys.stderr)
        report = getattr(error, "report", None)
        if report is not None:
            print_json(report.to_dict())
        return described.exit_code
    print_json(report.to_dict())
    return 0
