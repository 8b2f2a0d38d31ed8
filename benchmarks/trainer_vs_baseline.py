"""DeepSynth vs. the plain transformers Trainer + PEFT script a user would write — same model, data,
LoRA preset, batch size, accumulation, epochs and sequence lengths.

Variants (each run is a fresh subprocess, so its peak RSS is its own; the variants alternate round
by round, in reversed order every other round, so a slow period of a shared machine hits all):

* ``deepsynth``         — ``UnifiedProductionTrainer(config).train()`` as a user runs it, with the
  frozen-encoder feature cache (``use_feature_cache``, on by default);
* ``deepsynth-nocache`` — the same without the cache (the trainer as committed before issue #7);
* ``baseline``          — transformers ``Trainer`` + ``get_peft_model`` with the target names a user
  writes for "attention + down_proj" (``["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]``,
  unscoped: PEFT then also adapts the vision encoder's attention and MLP), the model's processor,
  a hand-written padding collator, ``logging_steps=10``, no checkpoints, no reporting;
* ``baseline-scoped``   — the same with the targets scoped to the language model by a regex, as a
  careful user would (same trainable tensors as DeepSynth).

Throughput is measured over the training loop only (``on_train_begin`` → ``on_train_end``: every
forward/backward, optimizer step, log and checkpoint write of the loop; not model loading, not
DeepSynth's before/after evaluation, which the baseline does not do — the end-to-end wall time of
each variant is reported too). tokens = non-padding input tokens, the 145 image positions of each
page included (they go through every language-model layer); samples = training examples × epochs.

    python benchmarks/trainer_vs_baseline.py compare --model embedded --rounds 5 \
        --json benchmarks/results/trainer_embedded.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe, embedded_dir, machine, model_dir, peak_gpu_mib, peak_rss_mib, write_json  # noqa: E402

VARIANTS = ("deepsynth", "deepsynth-nocache", "baseline", "baseline-scoped")
RESULT_PREFIX = "BENCH_RESULT "
ATTENTION_DOWN = ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]


def _timer():
    from transformers import TrainerCallback

    class LoopTimer(TrainerCallback):
        """Wall time of the training loop and the tokens it processed."""

        def __init__(self) -> None:
            self.started = self.seconds = self.cpu_started = self.cpu_seconds = None
            self.tokens_per_epoch = self.examples = 0
            self.steps = 0
            self.update_seconds: list[float] = []
            self._last = self._mark = None
            self.log_seconds = self.save_seconds = 0.0  # in-loop time spent logging / checkpointing
            self.saves = 0

        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            dataset = train_dataloader.dataset if train_dataloader is not None else []
            self.examples = len(dataset)
            self.tokens_per_epoch = sum(int(example["attention_mask"].sum()) for example in dataset)
            self.cpu_started = time.process_time()
            self.started = self._last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.update_seconds.append(now - self._last)
            self._last = self._mark = now

        # Trainer order after an update: on_step_end → log (on_log) → checkpoint (on_save).
        def on_log(self, args, state, control, logs=None, **kwargs):
            if self._mark is not None and logs and "loss" in logs:
                now = time.perf_counter()
                self.log_seconds += now - self._mark
                self._mark = now

        def on_save(self, args, state, control, **kwargs):
            if self._mark is not None:
                now = time.perf_counter()
                self.save_seconds += now - self._mark
                self.saves += 1
                self._mark = now

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.started
            self.cpu_seconds = time.process_time() - self.cpu_started
            self.steps = state.global_step

    return LoopTimer()


# --- DeepSynth -------------------------------------------------------------------------------------

def run_deepsynth(args, cached: bool) -> dict[str, Any]:
    from deepsynth.training.config import TrainerConfig
    from deepsynth.training.production_trainer import UnifiedProductionTrainer

    output = Path(tempfile.mkdtemp(prefix="bench-deepsynth-"))
    settings = dict(
        model_name=model_dir(args.model), output_dir=str(output / "run"), preset=args.preset,
        batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum, num_epochs=args.epochs,
        max_train_samples=args.samples, max_eval_samples=1, max_new_tokens=2, max_length=args.max_length,
        resume_from_checkpoint="never", seed=args.seed,
    )
    config = TrainerConfig.from_dict(settings)
    config.use_feature_cache = cached
    timer = _timer()
    trainer = UnifiedProductionTrainer(config, callbacks=[timer])
    cache = {"via": "trainer (use_feature_cache)"}
    started = time.perf_counter()
    metrics, _ = trainer.train()
    wall = time.perf_counter() - started
    shutil.rmtree(output, ignore_errors=True)
    if "feature_cache" in metrics:
        cache.update(metrics["feature_cache"])
    return {"timer": timer, "wall": wall, "trainable": metrics["trainable_params"]["total"], "cache": cache,
            "updates": metrics["optimizer_updates"]}


# --- the plain script a user would write ------------------------------------------------------------

def run_baseline(args, scoped: bool) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoProcessor, DeepseekOcr2ForConditionalGeneration, Trainer, TrainingArguments

    from deepsynth.data import load_sample_dataset  # the same pages and summaries, nothing else
    from deepsynth.data.collate import DEFAULT_SUMMARY_INSTRUCTION
    from deepsynth.training.lora_config import get_lora_preset
    from deepsynth.training.recommend import RECIPES

    # The same weights DeepSynth trains: the embedded model (shipped pretrained base) saved as a
    # folder with its processor, or the large model's folder.
    path = model_dir(args.model) or embedded_dir()
    torch.manual_seed(args.seed)
    model = DeepseekOcr2ForConditionalGeneration.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    tokenizer = processor.tokenizer
    preset = get_lora_preset(args.preset)
    targets = (r".*language_model\.layers\.\d+\..*\.(q_proj|k_proj|v_proj|o_proj|down_proj)$" if scoped
               else list(ATTENTION_DOWN))
    model = get_peft_model(model, LoraConfig(r=preset.rank, lora_alpha=preset.alpha, lora_dropout=preset.dropout,
                                             target_modules=targets))

    rows = load_sample_dataset("train", max_samples=args.samples)
    examples = []
    for row in rows:
        text = f"<image>\n{DEFAULT_SUMMARY_INSTRUCTION}{row['summary']}{tokenizer.eos_token}"
        encoded = processor(images=row["image"].convert("RGB"), text=text, return_tensors="pt", crop_to_patches=False,
                            truncation=True, max_length=args.max_length)
        labels = encoded["input_ids"].clone()
        labels[labels == processor.image_token_id] = -100
        examples.append({"input_ids": encoded["input_ids"][0], "attention_mask": encoded["attention_mask"][0],
                         "labels": labels[0], "pixel_values": encoded["pixel_values"]})

    def collate(batch):
        length = max(len(e["input_ids"]) for e in batch)
        out = {"input_ids": torch.full((len(batch), length), tokenizer.pad_token_id),
               "attention_mask": torch.zeros(len(batch), length, dtype=torch.long),
               "labels": torch.full((len(batch), length), -100)}
        for i, e in enumerate(batch):
            n = len(e["input_ids"])
            out["input_ids"][i, :n], out["attention_mask"][i, :n], out["labels"][i, :n] = (
                e["input_ids"], e["attention_mask"], e["labels"])
        out["pixel_values"] = torch.cat([e["pixel_values"] for e in batch])
        return out

    output = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    training_args = TrainingArguments(
        output_dir=str(output), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, num_train_epochs=args.epochs,
        learning_rate=RECIPES.get(args.preset, RECIPES["tiny_data"]).learning_rate, logging_steps=10,
        save_strategy="no", report_to="none", remove_unused_columns=False, seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
    )
    timer = _timer()
    trainer = Trainer(model=model, args=training_args, train_dataset=examples, data_collator=collate,
                      callbacks=[timer])
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    vision = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "vision_tower" in n)
    shutil.rmtree(output, ignore_errors=True)
    return {"timer": timer, "wall": wall, "trainable": trainable, "trainable_in_vision": vision,
            "updates": trainer.state.global_step}


def worker(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    process_started = time.perf_counter()
    if args.variant.startswith("deepsynth"):
        result = run_deepsynth(args, cached=args.variant == "deepsynth")
    else:
        result = run_baseline(args, scoped=args.variant == "baseline-scoped")
    timer = result.pop("timer")
    epochs_done = args.epochs
    record = {
        "variant": args.variant,
        "loop_seconds": timer.seconds,
        "tokens_per_s": timer.tokens_per_epoch * epochs_done / timer.seconds,
        # Tokens per CPU-second of this process (all its threads): insensitive to waiting for a core
        # on a shared machine; with --threads 1 it is the throughput of an uncontended core.
        "tokens_per_cpu_s": timer.tokens_per_epoch * epochs_done / timer.cpu_seconds,
        "loop_cpu_seconds": timer.cpu_seconds,
        "update_seconds": timer.update_seconds,
        "log_seconds": timer.log_seconds,
        "checkpoint_seconds": timer.save_seconds,
        "checkpoints": timer.saves,
        "samples_per_s": timer.examples * epochs_done / timer.seconds,
        "tokens_per_epoch": timer.tokens_per_epoch,
        "examples": timer.examples,
        "optimizer_updates": result.pop("updates"),
        "end_to_end_seconds": result.pop("wall"),
        "process_seconds": time.perf_counter() - process_started,
        "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_mib": peak_gpu_mib(),
        **result,
    }
    print(RESULT_PREFIX + json.dumps(record, default=str), flush=True)
    return 0


# --- the driver -------------------------------------------------------------------------------------

def _worker_command(args, variant: str) -> list[str]:
    command = [sys.executable, __file__, "run", "--variant", variant]
    for name in ("model", "preset", "samples", "batch_size", "grad_accum", "epochs", "max_length", "seed", "threads"):
        value = getattr(args, name)
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    return command


def compare(args) -> int:
    variants = args.variants.split(",")
    model_dir(args.model)  # build the checkpoint folders once, before timing anything
    embedded_dir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DISABLE_TQDM": "1"}
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for round_index in range(args.rounds):
        order = variants if round_index % 2 == 0 else variants[::-1]
        for variant in order:
            completed = subprocess.run(_worker_command(args, variant), env=env, capture_output=True, text=True)
            lines = [l for l in completed.stdout.splitlines() if l.startswith(RESULT_PREFIX)]
            if completed.returncode != 0 or not lines:
                print(completed.stdout[-3000:], completed.stderr[-5000:], file=sys.stderr)
                raise SystemExit(f"{variant} failed (exit {completed.returncode})")
            record = json.loads(lines[-1][len(RESULT_PREFIX):])
            runs[variant].append(record)
            print(f"round {round_index + 1}/{args.rounds} {variant:<18} {record['tokens_per_s']:8.1f} tok/s "
                  f"{record['tokens_per_cpu_s']:8.1f} tok/CPU-s "
                  f"{record['samples_per_s']:6.2f} samples/s  loop {record['loop_seconds']:6.1f} s  "
                  f"(logs {record['log_seconds']:.2f} s, {record['checkpoints']} checkpoints "
                  f"{record['checkpoint_seconds']:.2f} s)  rss {record['peak_rss_mib']:6.0f} MiB", flush=True)
    summary = summarise(runs, args.reference)
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "settings": vars(args),
              "machine": machine(), "summary": summary, "runs": runs}
    write_json(args.json, result)
    print_table(summary, args)
    return 0


def summarise(runs: dict[str, list[dict[str, Any]]], reference: str) -> dict[str, Any]:
    summary = {}
    for variant, records in runs.items():
        summary[variant] = {key: describe([r[key] for r in records]) for key in
                            ("tokens_per_s", "tokens_per_cpu_s", "samples_per_s", "loop_seconds",
                             "loop_cpu_seconds", "end_to_end_seconds", "peak_rss_mib", "log_seconds",
                             "checkpoint_seconds")}
        if records[0].get("peak_gpu_mib") is not None:
            summary[variant]["peak_gpu_mib"] = describe([r["peak_gpu_mib"] for r in records])
        first = records[0]
        summary[variant].update(trainable=first["trainable"], tokens_per_epoch=first["tokens_per_epoch"],
                                optimizer_updates=first["optimizer_updates"],
                                trainable_in_vision=first.get("trainable_in_vision", 0), cache=first.get("cache"))
    if reference in runs:
        for variant, records in runs.items():
            # Paired ratios: run i of a variant against run i of the reference (same round).
            for key in ("tokens_per_s", "tokens_per_cpu_s"):
                ratios = [r[key] / b[key] for r, b in zip(records, runs[reference])]
                summary[variant][f"{key}_ratio_vs_{reference}"] = describe(ratios)
    return summary


def print_table(summary: dict[str, Any], args) -> None:
    reference = args.reference
    print(f"\nmodel {args.model}, preset {args.preset}, {args.samples} samples, batch {args.batch_size}, "
          f"accumulation {args.grad_accum}, {args.epochs} epochs, {args.rounds} alternating rounds")
    def triple(d, fmt):
        return "/".join(format(d[k], fmt) for k in ("min", "median", "max")) if d else "-"

    print(f"{'variant':<18} {'tokens/s (wall)':>20} {'tokens/CPU-s':>20} {'samples/s':>7} {'RSS MiB':>8} "
          f"{'ratio wall':>16} {'ratio CPU':>16} {'trainable':>10}")
    for variant, s in summary.items():
        print(f"{variant:<18} {triple(s['tokens_per_s'], '.0f'):>20} {triple(s['tokens_per_cpu_s'], '.0f'):>20} "
              f"{s['samples_per_s']['median']:7.2f} {s['peak_rss_mib']['median']:8.0f} "
              f"{triple(s.get(f'tokens_per_s_ratio_vs_{reference}'), '.2f'):>16} "
              f"{triple(s.get(f'tokens_per_cpu_s_ratio_vs_{reference}'), '.2f'):>16} {s['trainable']:>10,}")
    print(f"(min/median/max over rounds; ratios are paired per round against {reference})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("compare", "run"):
        p = sub.add_parser(name)
        p.add_argument("--model", choices=("embedded", "large"), default="embedded")
        p.add_argument("--preset", default="tiny_data")
        p.add_argument("--samples", type=int, default=8)
        p.add_argument("--batch-size", type=int, default=2)
        p.add_argument("--grad-accum", type=int, default=1)
        p.add_argument("--epochs", type=int, default=3)
        p.add_argument("--max-length", type=int, default=512)
        p.add_argument("--seed", type=int, default=42)
        p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's choice)")
    compare_parser = sub.choices["compare"]
    compare_parser.add_argument("--rounds", type=int, default=3)
    compare_parser.add_argument("--variants", default=",".join(VARIANTS))
    compare_parser.add_argument("--reference", default="baseline-scoped")
    compare_parser.add_argument("--json", help="write runs and summary here")
    sub.choices["run"].add_argument("--variant", choices=VARIANTS, required=True)
    args = parser.parse_args(argv)
    return compare(args) if args.command == "compare" else worker(args)


if __name__ == "__main__":
    sys.exit(main())
