"""Preset ablation (issue #8, part 3): legacy default vs recommended preset+schedule vs an alternative.

Every cell is one real ``UnifiedProductionTrainer(TrainerConfig).train()`` run on the bundled French
samples (first ``n`` training documents; the first ``--eval-samples`` documents of the held-out
``eval`` split, the same for every cell), with held-out ROUGE-L / CER before and after. One JSON line
per cell is appended to ``--out`` as soon as the cell finishes, so a partial run keeps its results;
``report.py`` turns the file into the tables of docs/quality.md.

Configurations (LoRA fields from the library's presets, schedule from ``recommend``):

* ``legacy``      -- the legacy DeepSynth default: preset ``standard`` (attention q/k/v/o, r16), 1 epoch,
                     batch 2, no accumulation, lr 2e-5, no warmup, constant learning rate. Not scaled.
* ``recommended`` -- ``recommend(n, model).apply(...)``: preset and schedule DeepSynth recommends for n,
                     with ``num_epochs`` scaled down (see below); lr, accumulation, batch, warmup *ratio*
                     and cosine schedule are kept, warmup is re-resolved for the shorter run.
* ``alternative`` -- the same recommended schedule with the next-larger preset (tiny_data -> balanced,
                     balanced -> high_capacity_moe); at the top (n >= 50, high_capacity_moe) the
                     next-smaller one (balanced), so that c-vs-b still compares capacity at fixed data.
* ``recommended_hlr`` (optional) -- recommended, but lr x10: isolates whether the scaled runs are
                     learning-rate-starved.
* ``recommended_flat`` (optional) -- recommended without warmup and with a constant learning rate:
                     isolates the seed's "warmup + cosine" claim.
* ``router_focused`` (optional) -- recommended schedule with the router_focused preset (tiny_data +
                     router LoRA): at n < 10, where recommend picks tiny_data, isolates the router target.

Scaling (CPU): the recommended runs make ``ceil(batches/accum) * epochs`` updates; epochs are cut to
``max(1, min(E, ceil(budget / n)))`` where ``budget = --sample-passes`` is the number of training
sample passes (forward/backward of one document) allowed per cell. Everything else is the library's.

    python benchmarks/quality/save_smollm2.py /tmp/smollm2        # once, offline
    nice -n 19 python benchmarks/quality/ablation.py --model smollm2 --n 3 10 50 --seeds 0 1 2 \
        --configs legacy recommended alternative --out benchmarks/quality/results.jsonl
    python benchmarks/quality/report.py benchmarks/quality/results.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

NEXT_LARGER = {"tiny_data": "balanced", "balanced": "high_capacity_moe", "high_capacity_moe": "balanced"}
LEGACY = dict(preset="standard", num_epochs=1, batch_size=2, gradient_accumulation_steps=1,
              optimizer=dict(learning_rate=2e-5, weight_decay=0.01, warmup_steps=0, scheduler_type="none"))
MODELS = {"tiny": None, "smollm2": "/tmp/smollm2"}


def build_config(model: str, n: int, config: str, seed: int, args: argparse.Namespace):
    from deepsynth.training.config import TrainerConfig
    from deepsynth.training.recommend import RECIPES, estimate_updates, recommend

    model_name = MODELS[model] if model != "smollm2" else args.smollm2_dir
    base = TrainerConfig(
        model_name=model_name, output_dir=tempfile.mkdtemp(prefix="dsq-"), max_train_samples=n,
        max_eval_samples=args.eval_samples, max_new_tokens=args.max_new_tokens, max_length=args.max_length,
        seed=seed, dtype="float32", resume_from_checkpoint="never", save_total_limit=1,
        checkpoint_every_updates=10**6,
    )
    info: dict = {}
    if config == "legacy":
        data = base.with_preset("standard").to_dict()
        data.update(LEGACY)
        cfg = TrainerConfig.from_dict(data)
        info["unscaled_epochs"] = 1
    else:
        rec = recommend(n, model_name)
        cfg = rec.apply(base)
        info["recommend_warnings"] = rec.warnings
        info["recommended_preset"] = rec.preset_name
        info["unscaled_epochs"] = cfg.num_epochs
        info["unscaled_updates"] = rec.estimates["effective_updates"]
        epochs = max(1, min(cfg.num_epochs, math.ceil(args.sample_passes / n)))
        data = cfg.to_dict()
        data["num_epochs"] = epochs
        # recommend() resolves warmup to absolute updates of the *unscaled* run (e.g. 30 of 300);
        # kept as is it would be clipped to nearly the whole scaled run, so restore the recipe's ratio.
        data["optimizer"]["warmup_steps"] = None
        data["optimizer"]["warmup_ratio"] = RECIPES[rec.preset_name].warmup_ratio
        # The ablation compares presets and schedules at a fixed length: recommend's early-stopping
        # guard (n < 50) is off here, as in the legacy cells (it is measured separately).
        info["recommended_early_stopping"] = [data["eval_every_updates"], data["early_stopping_patience"]]
        data["eval_every_updates"] = None
        data["early_stopping_patience"] = None
        if config == "recommended_hlr":
            data["optimizer"]["learning_rate"] *= 10
        if config == "recommended_flat":  # isolates warmup + cosine: same run, constant lr, no warmup
            data["optimizer"].update(warmup_ratio=None, warmup_steps=0, scheduler_type="none")
        cfg = TrainerConfig.from_dict(data)
        if config == "alternative":
            cfg = cfg.with_preset(NEXT_LARGER[rec.preset_name])
        if config == "router_focused":  # isolates the router target where recommend says tiny_data (n < 10)
            cfg = cfg.with_preset("router_focused")
    est = estimate_updates(n, cfg.batch_size, cfg.gradient_accumulation_steps, cfg.num_epochs)
    info["scaled_updates"] = est.effective_updates
    info["scaled_steps"] = est.total_steps
    return cfg, info


def cache_baseline(cache_path: Path) -> None:
    """The 'before' evaluation (adapter disabled, greedy) is identical for every cell of a model and
    eval set; compute it once and reuse it (a pure time saving: same function, same inputs)."""
    import deepsynth.training.production_trainer as pt

    original = pt.evaluate_model
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}

    def evaluate(model, processor, examples, sources, references, **kwargs):
        if not kwargs.get("adapter_disabled"):
            return original(model, processor, examples, sources, references, **kwargs)
        key = json.dumps([getattr(model.config, "_name_or_path", "?"), type(model.get_base_model()).__name__,
                          getattr(model.config, "hidden_size", None), list(references), kwargs["max_new_tokens"],
                          kwargs["no_repeat_ngram_size"], kwargs["instruction"]], ensure_ascii=False)
        if key not in cache:
            cache[key] = original(model, processor, examples, sources, references, **kwargs)
            cache_path.write_text(json.dumps(cache, ensure_ascii=False))
        metrics, predictions = cache[key]
        return dict(metrics), list(predictions)

    pt.evaluate_model = evaluate


def run_cell(model: str, n: int, config: str, seed: int, args: argparse.Namespace) -> dict:
    from deepsynth.models.tiny import shipped_checkpoint
    from deepsynth.training.production_trainer import UnifiedProductionTrainer

    cfg, info = build_config(model, n, config, seed, args)
    started = time.perf_counter()
    try:
        metrics, _ = UnifiedProductionTrainer(cfg).train()
    finally:
        shutil.rmtree(cfg.output_dir, ignore_errors=True)
    wall = time.perf_counter() - started
    losses = [h["loss"] for h in metrics["history"] if "loss" in h]
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
        "wall_s": round(wall, 1), "threads": args.threads, "sample_passes": args.sample_passes,
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--n", type=int, nargs="+", default=[3, 10, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=["legacy", "recommended", "alternative"],
                        choices=["legacy", "recommended", "alternative", "recommended_hlr", "recommended_flat",
                                 "router_focused"])
    parser.add_argument("--sample-passes", type=int, default=60,
                        help="scaling: training-sample passes allowed per scaled cell (epochs = ceil(this / n))")
    parser.add_argument("--eval-samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smollm2-dir", default="/tmp/smollm2")
    parser.add_argument("--out", default="benchmarks/quality/results.jsonl")
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache_baseline(out.with_suffix(".baseline-cache.json"))
    args._train_tokens = count_train_tokens(args.model, args.n, args)
    done = set()
    if out.is_file():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["model"], r["n"], r["config"], r["seed"], r.get("weights")))
    from deepsynth.models.tiny import shipped_checkpoint

    weights = (str(shipped_checkpoint()) if shipped_checkpoint() else "random-init embedded") \
        if args.model == "tiny" else args.smollm2_dir
    # seed-major order: a partial run has every (n, config) at seed 0 before any seed 1.
    for seed in args.seeds:
        for n in args.n:
            for config in args.configs:
                if (args.model, n, config, seed, weights) in done:
                    continue
                record = run_cell(args.model, n, config, seed, args)
                with out.open("a", encoding="utf-8") as stream:
                    stream.write(json.dumps(record, ensure_ascii=False) + "\n")
                print(f"[{time.strftime('%H:%M:%S')}] {args.model} n={n} {config} seed={seed}: "
                      f"rougeL {record['before']['rougeL']:.3f}->{record['after']['rougeL']:.3f} "
                      f"cer {record['before']['cer']:.3f}->{record['after']['cer']:.3f} "
                      f"loss {record['before']['loss']:.3f}->{record['after']['loss']:.3f} "
                      f"updates {record['optimizer_updates']} wall {record['wall_s']}s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
