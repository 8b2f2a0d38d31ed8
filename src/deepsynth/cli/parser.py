"""The ``deepsynth`` argument parser: one sub-command per handler, each with its flags."""

from __future__ import annotations

import argparse
from typing import Any

from deepsynth.cli.commands import (
    cmd_eval, cmd_export, cmd_generate, cmd_inspect, cmd_label, cmd_presets, cmd_push, cmd_recommend,
)
from deepsynth.cli.flags import add_image_mode, add_learning_rates_flag, add_train_flags
from deepsynth.cli.train import cmd_train


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
    add_learning_rates_flag(p)
    add_image_mode(p, "show vision tokens per page for this resolution mode (default: the model's own)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_recommend)


def _add_inspect(sub: Any) -> None:
    p = sub.add_parser("inspect", help="show resolved LoRA targets and exact trainable parameters")
    p.add_argument("--model", default=None, help="model name or directory (default: the embedded model)")
    p.add_argument("--preset", required=True, help="preset name (see `deepsynth presets`)")
    p.add_argument("--include-routed-experts", action="store_true", help="also adapt every routed expert")
    add_image_mode(p, "show vision tokens per page for this resolution mode (default: the model's own)")
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
    add_learning_rates_flag(p)
    add_train_flags(p, group)
    p.set_defaults(func=cmd_train)


def _add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="before/after metrics of an adapter on a dataset")
    p.add_argument("--adapter", required=True, help="adapter folder written by `deepsynth train`")
    p.add_argument("--data", default=None,
                   help="data file or folder: its rows marked split 'eval', or all its rows without a 'split' column "
                        "(default: the rows the adapter's run held out from training)")
    p.add_argument("--max-eval-samples", type=int, default=None)
    add_image_mode(p, "read the pages in this resolution mode (default: the adapter's training mode)")
    p.add_argument("--ignore-case", action=argparse.BooleanOptionalAction, default=None,
                   help="transcription CER/WER ignore case (default: the adapter's training setting)")
    p.add_argument("--ignore-punctuation", action=argparse.BooleanOptionalAction, default=None,
                   help="transcription CER/WER ignore punctuation (default: the adapter's training setting)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_eval)


def _add_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate with an adapter, or with a model (a merged export)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--adapter", help="adapter folder written by `deepsynth train`")
    which.add_argument("--model", help="model folder or name, e.g. a merged export (`deepsynth export --merge`)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="page image file, or a PDF page: report.pdf#page=2")
    source.add_argument("--text", help="document text (rendered to a page for OCR models)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    add_image_mode(p, "read the page in this resolution mode (default: the adapter's training mode)")
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
