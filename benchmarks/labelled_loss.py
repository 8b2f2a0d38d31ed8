"""Logits and loss on labelled positions only vs full logits: tokens/s and peak memory of a LoRA training step.

Each run is a fresh subprocess (so its peak RSS is its own) that builds the model with a seeded
random init, applies the tiny_data LoRA preset (deepsynth.training.targets), and times training
steps — ``MoeTrainer.compute_loss`` (the trainer's own loss path) + backward — on one batch of
``--seq`` random tokens whose last ``--labelled`` tokens are the target (labels -100 elsewhere, as
after an image and a prompt). ``full`` runs with ``loss_on_labelled_positions=False``,
``labelled`` with the default. The variants alternate their order round by round; per round the
ratio labelled / full is taken, and min / median / max over rounds are reported. Both variants
must report the same losses (exactness is checked here too, not only in tests).

Models (vision is not run: with the feature cache a training step is the language model's):

* ``ocr2-real-vocab`` — DeepSeek-OCR-2's class with the ``large`` benchmark language model
  (benchmarks/common.py: hidden 512, 6 layers, 16 experts top-4) and DeepSeek-OCR's real
  vocabulary (129,280): lm_head-heavy, an upper bound of the gain;
* ``smollm2-dims`` — a Llama with SmolLM2-135M's dimensions (hidden 576, 30 layers, vocab 49,152,
  tied embeddings): lm_head ≈ 21% of the forward, close to DeepSeek-OCR's ≈ 22% at real dims;
* ``embedded`` — DeepSynth's tiny model as shipped (vocab 4,096): the smoke run.

    python benchmarks/labelled_loss.py --model ocr2-real-vocab --rounds 5 --json benchmarks/results/labelled_loss_ocr2.json
    python benchmarks/labelled_loss.py --model smollm2-dims --rounds 5 --json benchmarks/results/labelled_loss_smollm2.json
    python benchmarks/labelled_loss.py --smoke   # seconds, both variants in this process: checks the script works
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe, large_config, machine, write_json  # noqa: E402

MODELS = ("ocr2-real-vocab", "smollm2-dims", "embedded")
VARIANTS = ("full", "labelled")
DEEPSEEK_OCR_VOCAB = 129_280


def build_model(name: str) -> tuple[torch.nn.Module, str]:
    """(model with random weights, DeepSynth family) for benchmark model ``name``."""
    from transformers import DeepseekOcr2ForConditionalGeneration, LlamaConfig, LlamaForCausalLM

    from deepsynth.models import tiny

    torch.manual_seed(0)
    if name == "smollm2-dims":
        config = LlamaConfig(vocab_size=49_152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                             max_position_embeddings=2048)
        return LlamaForCausalLM(config), "causal_lm"
    config = tiny.embedded_config() if name == "embedded" else large_config()
    if name == "ocr2-real-vocab":
        config.text_config.vocab_size = DEEPSEEK_OCR_VOCAB
        config = type(config).from_dict(config.to_dict())
    return DeepseekOcr2ForConditionalGeneration(config), "deepseek_ocr2"


def worker(args: argparse.Namespace) -> dict:
    """One variant in this process: build, warm up, time ``args.steps`` training steps."""
    from transformers import TrainingArguments

    from deepsynth.training.lora_config import get_lora_preset
    from deepsynth.training.trainer import MoeTrainer
    from deepsynth.training.targets import apply_lora, resolve_targets

    torch.set_num_threads(args.threads)
    model, family = build_model(args.model)
    model = apply_lora(model, resolve_targets(model, get_lora_preset("tiny_data"), family))
    vocab = model.get_output_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(4, vocab, (args.batch, args.seq), generator=generator)
    labels = torch.full_like(input_ids, -100)
    labels[:, -args.labelled:] = input_ids[:, -args.labelled:]
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    with tempfile.TemporaryDirectory() as scratch:
        trainer = MoeTrainer(model=model, args=TrainingArguments(output_dir=scratch, use_cpu=True, report_to="none"),
                             loss_on_labelled_positions=args.variant == "labelled")
    model.train()
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def step(seed: int) -> float:
        torch.manual_seed(seed)  # same LoRA dropout masks in both variants
        model.zero_grad(set_to_none=True)
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        return float(loss.detach())

    losses = [step(0)]  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    losses += [step(seed) for seed in range(1, args.steps + 1)]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tokens = args.batch * args.seq * args.steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": args.variant, "tokens_per_s": tokens / wall, "tokens_per_cpu_s": tokens / cpu,
            "seconds_per_step": wall / args.steps, "peak_rss_mib": peak, "rss_after_build_mib": rss_built,
            "step_rss_mib": peak - rss_built, "losses": losses}


def run_variant(args: argparse.Namespace, variant: str) -> dict:
    if args.in_process:  # smoke: no process start-up (seconds of imports), but no per-variant peak RSS either
        threads = torch.get_num_threads()
        try:
            with torch.random.fork_rng(devices=[]):
                result = worker(argparse.Namespace(**{**vars(args), "variant": variant}))
        finally:
            torch.set_num_threads(threads)
        return {**result, "peak_rss_mib": None, "step_rss_mib": None, "rss_after_build_mib": None}
    command = [sys.executable, __file__, "--worker", "--variant", variant, "--model", args.model,
               "--seq", str(args.seq), "--labelled", str(args.labelled), "--batch", str(args.batch),
               "--steps", str(args.steps), "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"{variant} run failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


RATIOS = {"tokens/s": "tokens_per_s", "tokens/CPU-s": "tokens_per_cpu_s", "peak RSS": "peak_rss_mib",
          "RSS growth during steps": "step_rss_mib"}


def compare(args: argparse.Namespace) -> dict:
    rounds = []
    for index in range(args.rounds):
        order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]
        runs = {variant: run_variant(args, variant) for variant in order}
        full, labelled = runs["full"], runs["labelled"]
        worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(full["losses"], labelled["losses"]))
        if worst > 1e-5:
            raise SystemExit(f"round {index + 1}: losses differ (relative {worst:.2e}): {full['losses']} vs {labelled['losses']}")
        rounds.append({"order": list(order), **runs, "max_relative_loss_difference": worst,
                       "ratios": {name: labelled[key] / full[key] if full[key] else None for name, key in RATIOS.items()}})
        print(f"round {index + 1}/{args.rounds}: " + ", ".join(
            f"{name} ×{value:.3f}" for name, value in rounds[-1]["ratios"].items() if value is not None), flush=True)
    summary = {name: describe([r["ratios"][name] for r in rounds if r["ratios"][name] is not None])
               for name in RATIOS if any(r["ratios"][name] is not None for r in rounds)}
    absolute = {variant: {key: describe([r[variant][key] for r in rounds]) if rounds[0][variant][key] is not None
                          else None for key in
                          ("tokens_per_s", "tokens_per_cpu_s", "seconds_per_step", "peak_rss_mib", "step_rss_mib")}
                for variant in VARIANTS}
    return {"command": " ".join([Path(sys.executable).name, *sys.argv]), "settings": vars(args), "machine": machine(),
            "ratios_labelled_over_full": summary, "absolute": absolute, "rounds": rounds}


def print_summary(result: dict) -> None:
    settings = result["settings"]
    print(f"\n{settings['model']}: batch {settings['batch']} × {settings['seq']} tokens, {settings['labelled']} labelled, "
          f"{settings['steps']} steps per run, {settings['rounds']} paired rounds, {settings['threads']} thread(s)")
    for variant, values in result["absolute"].items():
        memory = (f"  peak RSS {values['peak_rss_mib']['median']:8.0f} MiB  RSS growth in steps "
                  f"{values['step_rss_mib']['median']:7.0f} MiB" if values["peak_rss_mib"] else "")
        print(f"  {variant:8s} tokens/s {values['tokens_per_s']['median']:9.1f}  s/step "
              f"{values['seconds_per_step']['median']:7.3f}{memory} (medians)")
    print("  labelled / full:")
    for name, stats in result["ratios_labelled_over_full"].items():
        print(f"    {name:24s} min {stats['min']:.3f}  median {stats['median']:.3f}  max {stats['max']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="ocr2-real-vocab")
    parser.add_argument("--seq", type=int, default=512, help="tokens per sequence")
    parser.add_argument("--labelled", type=int, default=100, help="labelled (target) tokens at the end of each sequence")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (after one warm-up step)")
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds (each: one fresh process per variant)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--in-process", action="store_true",
                        help="run the variants in this process (fast; peak RSS then not measured per variant)")
    parser.add_argument("--smoke", action="store_true", help="embedded model, 64 tokens, 1 round of 1 step, in process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.smoke:
        args.model, args.seq, args.labelled, args.steps, args.rounds, args.in_process = "embedded", 64, 8, 1, 1, True
    if not 0 < args.labelled < args.seq:
        parser.error(f"--labelled must be between 1 and --seq - 1 ({args.seq - 1}), got {args.labelled}")
    result = compare(args)
    print_summary(result)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
