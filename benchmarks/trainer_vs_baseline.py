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

Real dimensions (``--model deepseek-ocr`` / ``deepseek-ocr-2``): the model is built from its real
config (``deepseek-ai/DeepSeek-OCR`` through transformers' ``unlimited_ocr``,
``deepseek-community/DeepSeek-OCR-2``; benchmarks/real_dims.py's builders) with seeded random
weights — the same weights in every variant, no download. DeepSynth loads it through its own loader
from a checkpoint folder that holds the real config, tokenizer and processor settings but no weights:
the one step replaced is reading the weights (``deepsynth.models.loading._load_weights`` builds the
seeded random model instead). The pages are the bundled samples' texts rendered as A4 pages
(1240x1754 px) and read at the real resolution (v1: Base mode, 1024 px, 273 vision tokens; v2: its
1024 px global view + 768 px tiles); the vocabulary is the real 129,280 (the token ids come from
DeepSynth's shipped 4k tokenizer, which only changes how many tokens a summary takes). DeepSynth's
feature-cache encoding runs before its training loop: ``tokens_per_s_incl_cache`` (the ratio the docs
use) adds it to DeepSynth's loop time. Peak RSS is the process's (``peak_rss_mib``) and the training
loop's own (``loop_peak_rss_mib``, the high-water mark reset at the loop's start).
``--tiny-dims`` builds shrunken configs of the same classes (the suite's smoke run).

    python benchmarks/trainer_vs_baseline.py compare --model embedded --rounds 5 \
        --json benchmarks/results/trainer_embedded.json
    nice -n 5 python benchmarks/trainer_vs_baseline.py compare --model deepseek-ocr --samples 2 \
        --batch-size 1 --grad-accum 2 --epochs 3 --rounds 3 --variants deepsynth,baseline-scoped \
        --json benchmarks/results/trainer_real_dims_v1.json
    python benchmarks/trainer_vs_baseline.py profile --model deepseek-ocr --samples 1 --batch-size 1 \
        --grad-accum 1 --epochs 2 --profile-update 2 --json benchmarks/results/profile_real_dims_v1.json
"""

from __future__ import annotations

import argparse
import contextlib
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
from common import (  # noqa: E402
    _bench_root, describe, embedded_dir, machine, model_dir, peak_gpu_mib, peak_rss_mib, write_json,
)

VARIANTS = ("deepsynth", "deepsynth-nocache", "baseline", "baseline-scoped")
RESULT_PREFIX = "BENCH_RESULT "
ATTENTION_DOWN = ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
# --model names of the real-dimensions models → DeepSynth family (benchmarks/real_dims.py's names).
REAL_DIMS = {"deepseek-ocr": "deepseek_ocr", "deepseek-ocr-2": "deepseek_ocr2"}
MODELS = ("embedded", "large", *REAL_DIMS)
A4_PAGE = (1240, 1754)  # A4 at 150 dpi, as benchmarks/real_dims.py renders it


def _rss_status(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process in MiB (Linux), None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux ``clear_refs`` 5), so the loop's own peak can be read."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _timer():
    from transformers import TrainerCallback

    class LoopTimer(TrainerCallback):
        """Wall time of the training loop, the tokens it processed and its memory."""

        def __init__(self) -> None:
            self.started = self.seconds = self.cpu_started = self.cpu_seconds = None
            self.tokens_per_epoch = self.examples = 0
            self.steps = 0
            self.update_seconds: list[float] = []
            self._last = self._mark = None
            self.log_seconds = self.save_seconds = 0.0  # in-loop time spent logging / checkpointing
            self.saves = 0
            self.peak_before_loop = self.rss_at_loop_start = self.loop_peak = None

        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            dataset = train_dataloader.dataset if train_dataloader is not None else []
            self.examples = len(dataset)
            self.tokens_per_epoch = sum(int(example["attention_mask"].sum()) for example in dataset)
            self.peak_before_loop = peak_rss_mib()
            self.rss_at_loop_start = _rss_status("VmRSS")
            self._hwm_reset = _reset_peak_rss()
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
            self.loop_peak = _rss_status("VmHWM") if self._hwm_reset else None

    return LoopTimer()


def _profiler(update: int, rows: int):
    """A callback that runs torch.profiler over optimizer update ``update`` (its forward/backward passes
    and the optimizer step) and keeps the top ops by self CPU time."""
    import torch
    from transformers import TrainerCallback

    class UpdateProfiler(TrainerCallback):
        def __init__(self) -> None:
            self.profile = None
            self.report: dict[str, Any] | None = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step + 1 == update and self.profile is None:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                self.profile = torch.profiler.profile(activities=activities)
                self.profile.__enter__()
                self._started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.profile is not None and self.report is None and state.global_step == update:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - self._started
                self.profile.__exit__(None, None, None)
                self.report = profile_report(self.profile, rows, seconds)

    return UpdateProfiler()


def profile_report(profile, rows: int, seconds: float) -> dict[str, Any]:
    """Top ``rows`` ops by self CPU time (and by self device time on a GPU) of a finished profile."""
    events = profile.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0

    def entry(e) -> dict[str, Any]:
        return {"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1000, 1),
                "self_cpu_share": round(e.self_cpu_time_total / total, 4),
                "cpu_total_ms": round(e.cpu_time_total / 1000, 1),
                "self_device_ms": round(getattr(e, "self_device_time_total", 0) / 1000, 1)}

    by_cpu = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    report = {"update_seconds": round(seconds, 2), "self_cpu_ms_total": round(total / 1000, 1),
              "top_by_self_cpu": [entry(e) for e in by_cpu]}
    if any(getattr(e, "self_device_time_total", 0) for e in events):
        by_device = sorted(events, key=lambda e: getattr(e, "self_device_time_total", 0), reverse=True)[:rows]
        report["top_by_self_device"] = [entry(e) for e in by_device]
    return report


# --- the data and the real-dimensions models -------------------------------------------------------

def is_real_dims(model: str) -> bool:
    return model in REAL_DIMS


def training_rows(args):
    """The training rows of both variants: the bundled samples (their 640 px pages), or for the
    real-dimensions models the same samples' texts rendered as A4 pages."""
    import datasets

    from deepsynth.data import load_sample_dataset
    from deepsynth.data.render import render_document

    rows = load_sample_dataset("train", max_samples=args.samples)
    if not is_real_dims(args.model):
        return rows
    size, font, margin = ((256, 256), 8, 8) if args.tiny_dims else (A4_PAGE, 22, 60)
    pages = [render_document(text, width=size[0], height=size[1], font_size=font, margin=margin)
             for text in rows["text"]]
    return datasets.Dataset.from_dict({"text": rows["text"], "summary": rows["summary"], "image": pages})


def real_dims_dir(model: str, tiny_dims: bool, root: Path | None = None) -> str:
    """A checkpoint folder as a user has it, minus the weights: the real config.json (DeepSeek-OCR's own
    ``deepseek_vl_v2`` file for v1), the tokenizer and the processor settings. Built once."""
    import real_dims  # benchmarks/real_dims.py: the families' configs and processors

    from deepsynth.models import tiny
    from deepsynth.models.resolver import ARCHITECTURES_DIR, KNOWN_ARCHITECTURES

    family = REAL_DIMS[model]
    target = _bench_root(root) / f"{model}{'-tiny' if tiny_dims else ''}-config-only-v1"
    if (target / "config.json").is_file():
        return str(target)
    staging = target.with_name(target.name + f".staging-{os.getpid()}")
    staging.mkdir(parents=True)
    tokenizer = tiny.shipped_tokenizer()
    if tiny_dims:
        config = json.dumps(real_dims.tiny_config(family).to_dict(), indent=2)
    else:
        config = (ARCHITECTURES_DIR / KNOWN_ARCHITECTURES[real_dims.FAMILIES[family].lower()]).read_text()
    (staging / "config.json").write_text(config, encoding="utf-8")
    if family == "deepseek_ocr":  # DeepSeek-OCR's own processor_config.json fields (Base mode: 1024 px)
        tokenizer.save_pretrained(str(staging))
        size = 256 if tiny_dims else 1024
        (staging / "processor_config.json").write_text(json.dumps({"candidate_resolutions": [[size, size]]}))
    else:
        real_dims.build_processor(family, tokenizer, tiny_dims).save_pretrained(str(staging))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return str(target)


def random_model(family: str, config, dtype=None):
    """The seeded random-weight model of ``config`` (the same weights in every process), on the GPU when
    there is one, without touching the caller's random state."""
    import torch
    import real_dims

    from deepsynth.models.device import resolve_device, resolve_dtype

    device = resolve_device(None)
    with torch.random.fork_rng(devices=[]):
        return real_dims.build_model(family, config, dtype or resolve_dtype(None, device), device)


@contextlib.contextmanager
def random_weights(family: str):
    """While open, DeepSynth's loader builds seeded random weights instead of reading them (no download).

    Everything else of ``load_model_and_processor`` — config translation, tokenizer, processor and
    image mode, image-token alignment, experts implementation, freezing — runs as for a checkpoint.
    """
    from deepsynth.models import loading

    def build(resolved, dtype, extra=None, quantization=None):
        if extra:
            raise SystemExit("trainer_vs_baseline: quantized presets are not part of this comparison")
        return random_model(family, resolved.config, dtype), {}

    original, loading._load_weights = loading._load_weights, build
    try:
        yield
    finally:
        loading._load_weights = original


# --- DeepSynth -------------------------------------------------------------------------------------

@contextlib.contextmanager
def timed_feature_cache(record: dict[str, Any]):
    """While open, time the trainer's feature-cache encoding (it runs before the loop), unchanged otherwise."""
    from deepsynth.training import production_trainer

    original = production_trainer.precompute_image_features

    def timed(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            record["cache_seconds"] = time.perf_counter() - wall
            record["cache_cpu_seconds"] = time.process_time() - cpu

    production_trainer.precompute_image_features = timed
    try:
        yield
    finally:
        production_trainer.precompute_image_features = original


def run_deepsynth(args, cached: bool, callbacks: list) -> dict[str, Any]:
    from deepsynth.training.config import TrainerConfig
    from deepsynth.training.production_trainer import UnifiedProductionTrainer

    output = Path(tempfile.mkdtemp(prefix="bench-deepsynth-"))
    real = is_real_dims(args.model)
    settings = dict(
        model_name=real_dims_dir(args.model, args.tiny_dims) if real else model_dir(args.model),
        output_dir=str(output / "run"), preset=args.preset,
        batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum, num_epochs=args.epochs,
        max_train_samples=args.samples, max_eval_samples=1, max_new_tokens=2, max_length=max_length(args),
        resume_from_checkpoint="never", seed=args.seed,
    )
    config = TrainerConfig.from_dict(settings)
    config.use_feature_cache = cached
    cache_time: dict[str, Any] = {"cache_seconds": 0.0, "cache_cpu_seconds": 0.0}
    timer = _timer()
    trainer = UnifiedProductionTrainer(config, callbacks=[timer, *callbacks])
    cache = {"via": "trainer (use_feature_cache)"}
    with contextlib.ExitStack() as patches:
        patches.enter_context(timed_feature_cache(cache_time))
        if real:
            patches.enter_context(random_weights(REAL_DIMS[args.model]))
        started = time.perf_counter()
        metrics, _ = trainer.train(training_rows(args)) if real else trainer.train()
        wall = time.perf_counter() - started
    shutil.rmtree(output, ignore_errors=True)
    if "feature_cache" in metrics:
        cache.update(metrics["feature_cache"])
    return {"timer": timer, "wall": wall, "trainable": metrics["trainable_params"]["total"], "cache": cache,
            "updates": metrics["optimizer_updates"], **cache_time}


# --- the plain script a user would write ------------------------------------------------------------

def baseline_model_and_processor(args):
    """What the plain script loads: the same folder's weights (embedded / large) and processor, or for
    the real dimensions the same seeded random weights DeepSynth trains."""
    from transformers import AutoProcessor, DeepseekOcr2ForConditionalGeneration

    if not is_real_dims(args.model):
        # The same weights DeepSynth trains: the embedded model (shipped pretrained base) saved as a
        # folder with its processor, or the large model's folder.
        path = model_dir(args.model) or embedded_dir()
        return DeepseekOcr2ForConditionalGeneration.from_pretrained(path), AutoProcessor.from_pretrained(path)
    from transformers import AutoTokenizer

    from deepsynth.models.processors import build_deepseek_ocr_processor
    from deepsynth.models.resolver import resolve_config

    family, path = REAL_DIMS[args.model], real_dims_dir(args.model, args.tiny_dims)
    # DeepSeek-OCR's config.json says deepseek_vl_v2, which transformers does not know: translated as
    # DeepSynth's loader does (a user would have to write the same translation).
    config = resolve_config(path).config
    if family == "deepseek_ocr2":
        processor = AutoProcessor.from_pretrained(path)
    else:
        # transformers' own UnlimitedOcrImageProcessor needs torchvision (not installed here): the
        # Pillow processor DeepSynth builds, with the checkpoint's settings (Base mode, 1024 px).
        # config= keeps AutoTokenizer from reading config.json (it would offer to run remote code).
        settings = json.loads((Path(path) / "processor_config.json").read_text())
        processor = build_deepseek_ocr_processor(AutoTokenizer.from_pretrained(path, config=config), settings)
    config.image_token_id = processor.image_token_id
    return random_model(family, config), processor


def baseline_examples(args, processor) -> list[dict[str, Any]]:
    """The same pages and summaries, encoded as a plain script does (image positions unlabelled)."""
    from deepsynth.data.collate import DEFAULT_SUMMARY_INSTRUCTION

    tokenizer = processor.tokenizer
    # Global view only, as DeepSynth reads these models' pages (v2 at real dims: its tiles too).
    image_kwargs = {} if args.model == "deepseek-ocr-2" else {"crop_to_patches": False}
    examples = []
    for row in training_rows(args):
        text = f"<image>\n{DEFAULT_SUMMARY_INSTRUCTION}{row['summary']}{tokenizer.eos_token}"
        encoded = processor(images=row["image"].convert("RGB"), text=text, return_tensors="pt", truncation=True,
                            max_length=max_length(args), **image_kwargs)
        labels = encoded["input_ids"].clone()
        labels[labels == processor.image_token_id] = -100
        example = {"input_ids": encoded["input_ids"][0], "attention_mask": encoded["attention_mask"][0],
                   "labels": labels[0]}
        example.update({k: v for k, v in encoded.items() if k not in ("input_ids", "attention_mask", "labels")})
        examples.append(example)
    return examples


def baseline_collate(pad_token_id: int):
    """A hand-written padding collator (text padded right; image inputs concatenated)."""
    import torch

    def collate(batch):
        length = max(len(e["input_ids"]) for e in batch)
        out = {"input_ids": torch.full((len(batch), length), pad_token_id),
               "attention_mask": torch.zeros(len(batch), length, dtype=torch.long),
               "labels": torch.full((len(batch), length), -100)}
        for i, e in enumerate(batch):
            n = len(e["input_ids"])
            out["input_ids"][i, :n], out["attention_mask"][i, :n], out["labels"][i, :n] = (
                e["input_ids"], e["attention_mask"], e["labels"])
        for key in batch[0]:
            if key in out:
                continue
            values = [e[key] for e in batch]
            out[key] = torch.cat(values) if isinstance(values[0], torch.Tensor) else [v for x in values for v in x]
        return out

    return collate


def run_baseline(args, scoped: bool, callbacks: list) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from deepsynth.training.lora_config import get_lora_preset
    from deepsynth.training.recipes import RECIPES

    torch.manual_seed(args.seed)
    model, processor = baseline_model_and_processor(args)
    preset = get_lora_preset(args.preset)
    targets = (r".*language_model\.layers\.\d+\..*\.(q_proj|k_proj|v_proj|o_proj|down_proj)$" if scoped
               else list(ATTENTION_DOWN))
    model = get_peft_model(model, LoraConfig(r=preset.rank, lora_alpha=preset.alpha, lora_dropout=preset.dropout,
                                             target_modules=targets))
    examples = baseline_examples(args, processor)
    output = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    training_args = TrainingArguments(
        output_dir=str(output), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, num_train_epochs=args.epochs,
        learning_rate=RECIPES.get(args.preset, RECIPES["tiny_data"]).learning_rate, logging_steps=10,
        save_strategy="no", report_to="none", remove_unused_columns=False, seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
    )
    timer = _timer()
    trainer = Trainer(model=model, args=training_args, train_dataset=examples,
                      data_collator=baseline_collate(processor.tokenizer.pad_token_id), callbacks=[timer, *callbacks])
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    vision = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "vision_tower" in n)
    shutil.rmtree(output, ignore_errors=True)
    return {"timer": timer, "wall": wall, "trainable": trainable, "trainable_in_vision": vision,
            "updates": trainer.state.global_step}


def max_length(args) -> int:
    """--max-length, else 512 (the toy models' pages) or 2,048 (real dims: v2 reads an A4 page as
    1,121 vision tokens)."""
    return args.max_length or (2048 if is_real_dims(args.model) else 512)


def worker(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    process_started = time.perf_counter()
    profiler = [_profiler(args.profile_update, args.profile_rows)] if args.profile_update else []
    if args.variant.startswith("deepsynth"):
        result = run_deepsynth(args, cached=args.variant == "deepsynth", callbacks=profiler)
    else:
        result = run_baseline(args, scoped=args.variant == "baseline-scoped", callbacks=profiler)
    record = {"variant": args.variant, **loop_record(result.pop("timer"), args.epochs, result)}
    record.update(end_to_end_seconds=result.pop("wall"), optimizer_updates=result.pop("updates"),
                  process_seconds=time.perf_counter() - process_started,
                  peak_rss_mib=max(record["peak_rss_before_loop_mib"], record["loop_peak_rss_mib"] or 0, peak_rss_mib()),
                  peak_gpu_mib=peak_gpu_mib(), model=args.model, threads=torch.get_num_threads(), **result)
    if profiler:
        record["profile"] = profiler[0].report
    print(RESULT_PREFIX + json.dumps(record, default=str), flush=True)
    return 0


def loop_record(timer, epochs: int, result: dict[str, Any]) -> dict[str, Any]:
    """Throughput and memory of one run's training loop (and, for DeepSynth, of loop + cache encoding)."""
    tokens = timer.tokens_per_epoch * epochs
    cache_wall, cache_cpu = result.pop("cache_seconds", 0.0), result.pop("cache_cpu_seconds", 0.0)
    return {
        "loop_seconds": timer.seconds,
        "tokens_per_s": tokens / timer.seconds,
        # Tokens per CPU-second of this process (all its threads): insensitive to waiting for a core
        # on a shared machine; with --threads 1 it is the throughput of an uncontended core.
        "tokens_per_cpu_s": tokens / timer.cpu_seconds,
        # DeepSynth encodes its pages once before the loop (feature cache): counted here.
        "cache_seconds": cache_wall, "cache_cpu_seconds": cache_cpu,
        "tokens_per_s_incl_cache": tokens / (timer.seconds + cache_wall),
        "tokens_per_cpu_s_incl_cache": tokens / (timer.cpu_seconds + cache_cpu),
        "loop_cpu_seconds": timer.cpu_seconds,
        "update_seconds": timer.update_seconds,
        "log_seconds": timer.log_seconds,
        "checkpoint_seconds": timer.save_seconds,
        "checkpoints": timer.saves,
        "samples_per_s": timer.examples * epochs / timer.seconds,
        "tokens_per_epoch": timer.tokens_per_epoch,
        "examples": timer.examples,
        "peak_rss_before_loop_mib": timer.peak_before_loop,
        "rss_at_loop_start_mib": timer.rss_at_loop_start,
        "loop_peak_rss_mib": timer.loop_peak,
    }


# --- the driver -------------------------------------------------------------------------------------

def _worker_command(args, variant: str) -> list[str]:
    command = [sys.executable, __file__, "run", "--variant", variant]
    for name in ("model", "preset", "samples", "batch_size", "grad_accum", "epochs", "max_length", "seed", "threads",
                 "profile_update", "profile_rows"):
        value = getattr(args, name, None)
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    if args.tiny_dims:
        command.append("--tiny-dims")
    if args.nice and hasattr(os, "nice"):
        command = ["nice", "-n", str(args.nice), *command]
    return command


def _prepare_models(args) -> None:
    """Build the checkpoint folders once, before timing anything."""
    if is_real_dims(args.model):
        real_dims_dir(args.model, args.tiny_dims)
    else:
        model_dir(args.model)
        embedded_dir()


def run_variant(args, variant: str) -> dict[str, Any]:
    """One variant in a fresh process; its BENCH_RESULT record."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DISABLE_TQDM": "1"}
    completed = subprocess.run(_worker_command(args, variant), env=env, capture_output=True, text=True)
    lines = [l for l in completed.stdout.splitlines() if l.startswith(RESULT_PREFIX)]
    if completed.returncode != 0 or not lines:
        print(completed.stdout[-3000:], completed.stderr[-5000:], file=sys.stderr)
        raise SystemExit(f"{variant} failed (exit {completed.returncode})")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def compare(args) -> int:
    variants = args.variants.split(",")
    _prepare_models(args)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for round_index in range(args.rounds):
        order = variants if round_index % 2 == 0 else variants[::-1]
        for variant in order:
            record = run_variant(args, variant)
            runs[variant].append(record)
            print(f"round {round_index + 1}/{args.rounds} {variant:<18} {record['tokens_per_s']:8.1f} tok/s "
                  f"({record['tokens_per_s_incl_cache']:.1f} incl. cache) {record['tokens_per_cpu_s']:8.1f} tok/CPU-s "
                  f"{record['samples_per_s']:6.2f} samples/s  loop {record['loop_seconds']:6.1f} s  "
                  f"(logs {record['log_seconds']:.2f} s, {record['checkpoints']} checkpoints "
                  f"{record['checkpoint_seconds']:.2f} s)  rss {record['peak_rss_mib']:6.0f} MiB "
                  f"(loop {record['loop_peak_rss_mib'] or 0:.0f})", flush=True)
            if args.json:  # after every run: an interrupted session keeps what it measured
                write_json(args.json, _result(args, runs))
    result = _result(args, runs)
    write_json(args.json, result)
    print_table(result["summary"], args)
    return 0


def _result(args, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    done = {variant: records for variant, records in runs.items() if records}
    return {"command": " ".join([Path(sys.executable).name, *sys.argv]), "settings": vars(args),
            "machine": machine(), "summary": summarise(done, args.reference), "runs": runs}


def profile(args) -> int:
    """Profile one optimizer update of each variant (each a fresh process); print the top ops."""
    _prepare_models(args)
    args.profile_update = args.profile_update or 1
    reports = {}
    for variant in args.variants.split(","):
        record = run_variant(args, variant)
        reports[variant] = {"profile": record["profile"], "tokens_per_epoch": record["tokens_per_epoch"],
                            "update_seconds": record["update_seconds"], "peak_rss_mib": record["peak_rss_mib"]}
        print(f"\n{variant}: update {args.profile_update}, {record['profile']['update_seconds']:.1f} s under the "
              f"profiler, {record['profile']['self_cpu_ms_total'] / 1000:.1f} CPU-s of ops")
        print(profile_table(record["profile"]["top_by_self_cpu"]))
    write_json(args.json, {"command": " ".join([Path(sys.executable).name, *sys.argv]), "settings": vars(args),
                           "machine": machine(), "profiles": reports})
    return 0


def profile_table(entries: list[dict[str, Any]]) -> str:
    lines = ["| op | calls | self CPU ms | share of self CPU |", "|---|---|---|---|"]
    lines += [f"| `{e['op']}` | {e['calls']} | {e['self_cpu_ms']:,.0f} | {e['self_cpu_share']:.1%} |" for e in entries]
    return "\n".join(lines)


RATIO_KEYS = ("tokens_per_s", "tokens_per_cpu_s", "tokens_per_s_incl_cache", "tokens_per_cpu_s_incl_cache",
              "peak_rss_mib", "loop_peak_rss_mib")


def summarise(runs: dict[str, list[dict[str, Any]]], reference: str) -> dict[str, Any]:
    summary = {}
    for variant, records in runs.items():
        summary[variant] = {key: describe([r[key] for r in records]) for key in
                            ("tokens_per_s", "tokens_per_cpu_s", "tokens_per_s_incl_cache",
                             "tokens_per_cpu_s_incl_cache", "samples_per_s", "loop_seconds", "loop_cpu_seconds",
                             "cache_seconds", "end_to_end_seconds", "peak_rss_mib", "log_seconds",
                             "checkpoint_seconds")
                            if all(r.get(key) is not None for r in records)}
        for key in ("loop_peak_rss_mib", "rss_at_loop_start_mib", "peak_gpu_mib"):
            if all(r.get(key) is not None for r in records):
                summary[variant][key] = describe([r[key] for r in records])
        first = records[0]
        summary[variant].update(trainable=first["trainable"], tokens_per_epoch=first["tokens_per_epoch"],
                                optimizer_updates=first["optimizer_updates"],
                                trainable_in_vision=first.get("trainable_in_vision", 0), cache=first.get("cache"))
    if reference in runs:
        for variant, records in runs.items():
            # Paired ratios: run i of a variant against run i of the reference (same round).
            for key in RATIO_KEYS:
                pairs = [(r.get(key), b.get(key)) for r, b in zip(records, runs[reference])]
                if pairs and all(r is not None and b for r, b in pairs):
                    summary[variant][f"{key}_ratio_vs_{reference}"] = describe([r / b for r, b in pairs])
    return summary


def print_table(summary: dict[str, Any], args) -> None:
    reference = args.reference
    print(f"\nmodel {args.model}{' (tiny dims)' if args.tiny_dims else ''}, preset {args.preset}, {args.samples} "
          f"samples, batch {args.batch_size}, accumulation {args.grad_accum}, {args.epochs} epochs, "
          f"{args.rounds} alternating rounds")

    def triple(d, fmt):
        return "/".join(format(d[k], fmt) for k in ("min", "median", "max")) if d else "-"

    print(f"{'variant':<18} {'tokens/s (wall)':>20} {'incl. cache':>20} {'tokens/CPU-s':>20} {'RSS MiB':>8} "
          f"{'ratio wall':>16} {'ratio incl. cache':>18} {'ratio CPU':>16} {'ratio RSS':>18} {'trainable':>10}")
    for variant, s in summary.items():
        print(f"{variant:<18} {triple(s['tokens_per_s'], '.1f'):>20} {triple(s['tokens_per_s_incl_cache'], '.1f'):>20} "
              f"{triple(s['tokens_per_cpu_s'], '.1f'):>20} {s['peak_rss_mib']['median']:8.0f} "
              f"{triple(s.get(f'tokens_per_s_ratio_vs_{reference}'), '.2f'):>16} "
              f"{triple(s.get(f'tokens_per_s_incl_cache_ratio_vs_{reference}'), '.2f'):>18} "
              f"{triple(s.get(f'tokens_per_cpu_s_ratio_vs_{reference}'), '.2f'):>16} "
              f"{triple(s.get(f'peak_rss_mib_ratio_vs_{reference}'), '.3f'):>18} {s['trainable']:>10,}")
    print(f"(min/median/max over rounds; ratios are paired per round against {reference})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("compare", "run", "profile"):
        p = sub.add_parser(name)
        p.add_argument("--model", choices=MODELS, default="embedded")
        p.add_argument("--tiny-dims", action="store_true",
                       help="deepseek-ocr(-2): shrunken configs of the same classes (the smoke run)")
        p.add_argument("--preset", default="tiny_data")
        p.add_argument("--samples", type=int, default=8)
        p.add_argument("--batch-size", type=int, default=2)
        p.add_argument("--grad-accum", type=int, default=1)
        p.add_argument("--epochs", type=int, default=3)
        p.add_argument("--max-length", type=int, default=None, help="default: 512, 2048 for the real-dims models")
        p.add_argument("--seed", type=int, default=42)
        p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's choice)")
        p.add_argument("--profile-update", type=int, default=None, help="profile this optimizer update (1-based)")
        p.add_argument("--profile-rows", type=int, default=15)
    for name in ("compare", "profile"):
        p = sub.choices[name]
        p.add_argument("--variants", default=",".join(VARIANTS) if name == "compare" else "deepsynth,baseline-scoped")
        p.add_argument("--reference", default="baseline-scoped")
        p.add_argument("--json", help="write runs and summary here")
        p.add_argument("--nice", type=int, default=None, help="run each variant's process under nice -n N")
    sub.choices["compare"].add_argument("--rounds", type=int, default=3)
    sub.choices["run"].add_argument("--variant", choices=VARIANTS, required=True)
    args = parser.parse_args(argv)
    if args.command == "run":
        return worker(args)
    return compare(args) if args.command == "compare" else profile(args)


if __name__ == "__main__":
    sys.exit(main())
