"""Preset ablation (issue #8, part 3; full-length runs: issue 17) on real training runs.

Every cell is one real ``UnifiedProductionTrainer(TrainerConfig).train()`` run on the bundled French
samples (first ``n`` training documents; the first ``--eval-samples`` documents of the held-out
``eval`` split, the same for every cell), with held-out loss / ROUGE-L / CER before and after. One JSON
line per cell is appended to ``--out`` as soon as the cell finishes and cells already there are
skipped, so an interrupted run resumes where it stopped; ``report.py`` turns one or several such files
into the tables of docs/quality.md.

Configurations (LoRA fields from the library's presets, schedule from ``recommend``):

* ``legacy``      -- the legacy DeepSynth default: preset ``standard`` (attention q/k/v/o, r16), 1 epoch,
                     batch 2, no accumulation, lr 2e-5, no warmup, constant learning rate. Never scaled.
* ``recommended`` -- ``recommend(n, model, learning_rates="guide").apply(...)``: the preset and schedule
                     DeepSynth recommends for n, at the design guide's learning rates (what ``recommend``
                     planned when the full-length study ran; every lr_xK below multiplies these rates).
* ``evidence``    -- ``recommend(n, model).apply(...)``: today's plan, at the learning rates the study
                     supports (issue #17: x10 the guide's at n < 50, x3 from 50).
* ``lr_xK``       -- recommended with the learning rate x K (any number: lr_x3, lr_x10, lr_x30; lr_x1 =
                     recommended).
* ``flat_xK``     -- lr_xK with a constant learning rate and no warmup: warmup + cosine vs constant at a
                     chosen rate (flat_x1 = recommended_flat).
* ``alternative`` -- the same recommended schedule with the next-larger preset (tiny_data -> balanced,
                     balanced -> high_capacity_moe); at the top (n >= 50, high_capacity_moe) the
                     next-smaller one (balanced), so that c-vs-b still compares capacity at fixed data.
* ``recommended_hlr`` (= lr_x10), ``recommended_flat`` (= flat_x1): the names of the scaled study.
* ``router_focused`` -- recommended schedule with the router_focused preset (tiny_data + router LoRA): at
                     n < 10, where recommend picks tiny_data, isolates the router target.

Two lengths:

* **scaled** (default, ``--sample-passes P``): ``num_epochs`` cut to ``max(1, min(E, ceil(P / n)))``
  training-sample passes; warmup stays the recipe's *ratio*; early stopping off (fixed-length comparison).
* **full length** (``--full-length``, or ``--sample-passes 0``): the recipes exactly as ``recommend``
  plans them, early stopping included (n < 50: held-out loss every ceil(updates / 20) updates on the
  eval documents, patience 3, the best adapter kept and scored). Each line records where the run
  stopped: ``optimizer_updates`` of ``planned_updates``, ``eval_history`` ([update, held-out loss]
  pairs), ``best_eval_step`` / ``best_eval_loss``.

Two cells at a time: start the same command twice with the same ``--out``; each worker takes the next
cell no other worker holds (an fcntl lock per cell in the temp directory, released when its process
dies), so the cells run in the given order, seed-major. ``run_full.sh`` is the issue-17 queue.

``--smoke`` (test suite): at most 2 epochs per recommended cell and, where early stopping is on, an
evaluation every update. The cheapest invocations (seconds; tiny model, 1 held-out document):

    python benchmarks/quality/ablation.py --model tiny --n 3 --seeds 0 --configs legacy recommended \
        --sample-passes 3 --eval-samples 1 --max-new-tokens 4 --out /tmp/q/scaled.jsonl
    python benchmarks/quality/ablation.py --model tiny --n 3 --seeds 0 --configs recommended flat_x10 \
        --full-length --smoke --eval-samples 1 --max-new-tokens 4 --out /tmp/q/full.jsonl
    python benchmarks/quality/report.py /tmp/q/scaled.jsonl /tmp/q/full.jsonl --verdicts

Real runs (docs/quality.md has the exact commands and timings):

    python benchmarks/quality/save_smollm2.py /tmp/smollm2        # once, offline
    nice -n 19 python benchmarks/quality/ablation.py --model smollm2 --n 3 10 50 --seeds 0 1 2 \
        --configs legacy recommended alternative --out benchmarks/quality/results.jsonl
    nice -n 19 bash benchmarks/quality/run_full.sh &   # twice: two workers
    python benchmarks/quality/report.py benchmarks/quality/results_full_*.jsonl --verdicts
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

NEXT_LARGER = {"tiny_data": "balanced", "balanced": "high_capacity_moe", "high_capacity_moe": "balanced"}
LEGACY = dict(preset="standard", num_epochs=1, batch_size=2, gradient_accumulation_steps=1,
              optimizer=dict(learning_rate=2e-5, weight_decay=0.01, warmup_steps=0, scheduler_type="none"))
MODELS = {"tiny": None, "smollm2": "/tmp/smollm2"}
NAMED_CONFIGS = ("legacy", "recommended", "evidence", "alternative", "recommended_hlr", "recommended_flat", "router_focused")
# Generic families: lr_xK = recommended with lr x K; flat_xK = that, constant lr, no warmup.
FAMILY = re.compile(r"^(lr|flat)_x(\d+(?:\.\d+)?)$")
SMOKE_EPOCHS = 2


def config_name(name: str) -> str:
    """argparse type: a named config or an ``lr_xK`` / ``flat_xK`` family member."""
    if name in NAMED_CONFIGS or FAMILY.match(name):
        return name
    raise argparse.ArgumentTypeError(f"unknown config {name!r}: expected one of {', '.join(NAMED_CONFIGS)}, "
                                     "lr_xK or flat_xK (K a number, e.g. lr_x10, flat_x3)")


def lr_and_flat(config: str) -> tuple[float, bool]:
    """(learning-rate multiplier, constant-lr-without-warmup) of a recommended-schedule config."""
    family = FAMILY.match(config)
    if family:
        return float(family.group(2)), family.group(1) == "flat"
    return {"recommended_hlr": (10.0, False), "recommended_flat": (1.0, True)}.get(config, (1.0, False))


def preset_applied(config, preset: str):
    """``config`` with all of ``preset``'s LoRA fields (the CLI's ``--preset``: training.config.build_config)."""
    from deepsynth.training.config import build_config

    return build_config(config.to_dict(), preset)


def legacy_config(base):
    from deepsynth.training.config import TrainerConfig

    data = preset_applied(base, "standard").to_dict()
    data.update(LEGACY)
    return TrainerConfig.from_dict(data), {"unscaled_epochs": 1}


def recommended_config(model_name, n: int, config: str, base, args: argparse.Namespace):
    """``recommend(n).apply(base)``, then the config's change; scaled unless ``--full-length``."""
    from deepsynth.training.config import TrainerConfig
    from deepsynth.training.recipes import RECIPES
    from deepsynth.training.recommend import recommend

    rec = recommend(n, model_name, learning_rates="evidence" if config == "evidence" else "guide")
    cfg = rec.apply(base)
    info = {"recommend_warnings": rec.warnings, "recommended_preset": rec.preset_name,
            "unscaled_epochs": cfg.num_epochs, "unscaled_updates": rec.estimates["effective_updates"],
            "recommended_early_stopping": [cfg.eval_every_updates, cfg.early_stopping_patience]}
    data = cfg.to_dict()
    if not args.full_length:
        data["num_epochs"] = max(1, min(cfg.num_epochs, math.ceil(args.sample_passes / n)))
        # Keep the recipe's warmup *ratio* so a scaled run warms up over the same share of its updates.
        data["optimizer"]["warmup_steps"] = None
        data["optimizer"]["warmup_ratio"] = RECIPES[rec.preset_name].warmup_ratio
        # Scaled runs compare presets and schedules at a fixed length: early stopping off.
        data["eval_every_updates"] = None
        data["early_stopping_patience"] = None
    if args.smoke:  # a few updates; evaluate every update so the early-stopping record is exercised
        data["num_epochs"] = min(data["num_epochs"], SMOKE_EPOCHS)
        if data["early_stopping_patience"]:
            data["eval_every_updates"] = 1
    multiplier, flat = lr_and_flat(config)
    data["optimizer"]["learning_rate"] *= multiplier
    if flat:  # isolates warmup + cosine: same run, constant lr, no warmup
        data["optimizer"].update(warmup_ratio=None, warmup_steps=0, scheduler_type="none")
    info["lr_multiplier"] = multiplier
    cfg = TrainerConfig.from_dict(data)
    if config == "alternative":
        cfg = preset_applied(cfg, NEXT_LARGER[rec.preset_name])
    if config == "router_focused":  # isolates the router target where recommend says tiny_data (n < 10)
        cfg = preset_applied(cfg, "router_focused")
    return cfg, info


def build_config(model: str, n: int, config: str, seed: int, args: argparse.Namespace):
    from deepsynth.training.config import TrainerConfig
    from deepsynth.training.recommend import estimate_updates

    model_name = MODELS[model] if model != "smollm2" else args.smollm2_dir
    base = TrainerConfig(
        model_name=model_name, output_dir=tempfile.mkdtemp(prefix="dsq-"), max_train_samples=n,
        max_eval_samples=args.eval_samples, max_new_tokens=args.max_new_tokens, max_length=args.max_length,
        seed=seed, dtype="float32", resume_from_checkpoint="never", save_total_limit=1,
        checkpoint_every_updates=10**6,
    )
    if config == "legacy":
        cfg, info = legacy_config(base)
    else:
        cfg, info = recommended_config(model_name, n, config, base, args)
    est = estimate_updates(n, cfg.batch_size, cfg.gradient_accumulation_steps, cfg.num_epochs)
    info["scaled_updates"] = est.effective_updates
    info["scaled_steps"] = est.total_steps
    info["early_stopping"] = [cfg.eval_every_updates, cfg.early_stopping_patience]
    return cfg, info


def cache_baseline(cache_path: Path) -> None:
    """The 'before' evaluation (adapter disabled, greedy) is identical for every cell of a model and
    eval set; compute it once and reuse it (a pure time saving: same function, same inputs)."""
    import deepsynth.training.production_trainer as pt

    original = pt.evaluate_model
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}

    def evaluate(model, processor, examples, references, **kwargs):
        if not kwargs.get("adapter_disabled"):
            return original(model, processor, examples, references, **kwargs)
        # The examples' tokens hold the prompt, its instruction included.
        prompts = hashlib.sha256(repr([[int(t) for t in e["input_ids"]] for e in examples]).encode()).hexdigest()
        key = json.dumps([getattr(model.config, "_name_or_path", "?"), type(model.get_base_model()).__name__,
                          getattr(model.config, "hidden_size", None), list(references), kwargs["max_new_tokens"],
                          kwargs["no_repeat_ngram_size"], prompts], ensure_ascii=False)
        if key not in cache:
            cache[key] = original(model, processor, examples, references, **kwargs)
            with locked(cache_path):  # workers share the cache: merge, then replace
                on_disk = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
                cache.update({k: v for k, v in on_disk.items() if k not in cache})
                tmp = cache_path.with_suffix(f".tmp{os.getpid()}")
                tmp.write_text(json.dumps(cache, ensure_ascii=False))
                os.replace(tmp, cache_path)
        metrics, predictions = cache[key]
        return dict(metrics), list(predictions)

    pt.evaluate_model = evaluate


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive advisory lock (fcntl) guarding ``path`` for the duration of the block.

    The lock file lives in the temp directory, named after ``path``, so results folders stay clean.
    """
    name = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    with (Path(tempfile.gettempdir()) / f"dsq-lock-{name}").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def try_claim(claims: Path, key: tuple):
    """An open, locked claim file for the cell ``key``, or None when another worker holds it.

    Workers sharing one ``--out`` take cells in the same order; the lock dies with its process, so
    a killed worker's cell is free again for the next start (which resumes from ``--out``).
    """
    claims.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:16]
    handle = (claims / f"{name}.lock").open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def run_cell(model: str, n: int, config: str, seed: int, args: argparse.Namespace) -> dict:
    from deepsynth.models.tiny import shipped_checkpoint
    from deepsynth.training.production_trainer import UnifiedProductionTrainer

    cfg, info = build_config(model, n, config, seed, args)
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        metrics, _ = UnifiedProductionTrainer(cfg).train()
    finally:
        shutil.rmtree(cfg.output_dir, ignore_errors=True)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started  # wall time depends on the other jobs; CPU time less so
    losses = [h["loss"] for h in metrics["history"] if "loss" in h]
    evals = [[h["step"], h["eval_loss"]] for h in metrics["history"] if "eval_loss" in h]
    best = min(evals, key=lambda e: e[1]) if evals else [None, None]
    return {
        "model": model, "weights": (str(shipped_checkpoint()) if shipped_checkpoint() else "random-init embedded")
        if model == "tiny" else cfg.model_name,
        "n": n, "config": config, "seed": seed, "preset": cfg.preset,
        "lora": {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                 "targets": cfg.lora_target_modules},
        "schedule": {"epochs": cfg.num_epochs, "batch_size": cfg.batch_size,
                     "accumulation": cfg.gradient_accumulation_steps, **cfg.optimizer.to_dict()},
        **info,
        "optimizer_updates": metrics["optimizer_updates"], "warmup_steps": metrics["warmup_steps"],
        "trainable_params": metrics["trainable_params"]["total"],
        "num_eval_samples": metrics["num_eval_samples"], "max_new_tokens": cfg.max_new_tokens,
        "before": metrics["eval"]["before"], "after": metrics["eval"]["after"],
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "train_loss": metrics["train"]["train_loss"], "train_tokens": args._train_tokens.get(n),
        "sample_after": metrics["samples"][0]["after"] if metrics["samples"] else None,
        "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "threads": args.threads,
        "sample_passes": None if args.full_length else args.sample_passes,
        "full_length": args.full_length, "smoke": args.smoke,
        # Where the run stopped: planned updates (the recipe's), updates made, the held-out loss
        # evaluations during training [update, loss], and the best one (the adapter kept and scored).
        "planned_updates": metrics["estimated_updates"], "early_stopped": metrics["early_stopped"],
        "eval_history": evals, "best_eval_step": best[0], "best_eval_loss": best[1],
    }


def count_train_tokens(model: str, ns: list[int], args: argparse.Namespace) -> dict[int, dict]:
    """Target (summary) tokens and whole-sequence tokens of the first n training documents."""
    from deepsynth.data import load_sample_dataset
    from deepsynth.data.collate import DEFAULT_SUMMARY_INSTRUCTION, build_example
    from deepsynth.models.loading import load_model_and_processor

    if model != "smollm2":
        return {}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.smollm2_dir)
    rows = load_sample_dataset("train", max_samples=max(ns))
    out = {}
    for n in ns:
        ex = [build_example(tok, t, s, instruction=DEFAULT_SUMMARY_INSTRUCTION, max_length=args.max_length)
              for t, s in zip(rows["text"][:n], rows["summary"][:n])]
        out[n] = {"target": sum(sum(1 for l in e["labels"] if l != -100) for e in ex),
                  "sequence": sum(len(e["input_ids"]) for e in ex)}
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--n", type=int, nargs="+", default=[3, 10, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", type=config_name, default=["legacy", "recommended", "alternative"],
                        metavar="CONFIG", help=f"{', '.join(NAMED_CONFIGS)}, lr_xK, flat_xK")
    parser.add_argument("--sample-passes", type=int, default=60,
                        help="scaling: training-sample passes allowed per scaled cell (epochs = ceil(this / n)); "
                             "0 = --full-length")
    parser.add_argument("--full-length", action="store_true",
                        help="no scaling: the recipes exactly as recommend plans them, early stopping included")
    parser.add_argument("--smoke", action="store_true",
                        help=f"test-suite size: at most {SMOKE_EPOCHS} epochs per recommended cell, evaluation "
                             "every update where early stopping is on")
    parser.add_argument("--eval-samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smollm2-dir", default="/tmp/smollm2")
    parser.add_argument("--baseline-cache", type=Path, default=None,
                        help="the base model's evaluation cache (default: next to --out)")
    parser.add_argument("--out", default="benchmarks/quality/results.jsonl")
    args = parser.parse_args(argv)
    args.full_length = args.full_length or args.sample_passes == 0
    return args


def done_cells(out: Path) -> set[tuple]:
    if not out.is_file():
        return set()
    records = (json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip())
    return {(r["model"], r["n"], r["config"], r["seed"], r.get("weights"), r.get("full_length", False))
            for r in records}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache_baseline(args.baseline_cache or out.with_suffix(".baseline-cache.json"))
    args._train_tokens = count_train_tokens(args.model, args.n, args)
    # Several workers may share --out (two cells at a time): each takes the next cell nobody holds.
    claims = Path(tempfile.gettempdir()) / f"dsq-claims-{hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]}"
    from deepsynth.models.tiny import shipped_checkpoint

    weights = (str(shipped_checkpoint()) if shipped_checkpoint() else "random-init embedded") \
        if args.model == "tiny" else args.smollm2_dir
    # seed-major order: a partial run has every (n, config) at seed 0 before any seed 1.
    for seed in args.seeds:
        for n in args.n:
            for config in args.configs:
                key = (args.model, n, config, seed, weights, args.full_length)
                if key in done_cells(out):
                    continue
                claim = try_claim(claims, key)
                if claim is None:
                    continue
                with claim:
                    if key in done_cells(out):  # finished by another worker since we looked
                        continue
                    record = run_cell(args.model, n, config, seed, args)
                    with locked(out):
                        with out.open("a", encoding="utf-8") as stream:
                            stream.write(json.dumps(record, ensure_ascii=False) + "\n")
                log_cell(record)


def log_cell(record: dict) -> None:
    stop = (f" stopped {record['optimizer_updates']}/{record['planned_updates']} best@{record['best_eval_step']}"
            if record.get("eval_history") else "")
    print(f"[{time.strftime('%H:%M:%S')}] {record['model']} n={record['n']} {record['config']} seed={record['seed']}: "
          f"rougeL {record['before']['rougeL']:.3f}->{record['after']['rougeL']:.3f} "
          f"cer {record['before']['cer']:.3f}->{record['after']['cer']:.3f} "
          f"loss {record['before']['loss']:.3f}->{record['after']['loss']:.3f} "
          f"updates {record['optimizer_updates']}{stop} wall {record['wall_s']}s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
