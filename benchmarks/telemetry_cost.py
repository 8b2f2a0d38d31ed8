"""Cost of the MoE telemetry hooks (deepsynth.training.moe.install_moe) on one training step.

Embedded model, tiny_data LoRA, 2 cached examples, 1 thread; ``--pairs`` alternating pairs of steps
with and without the hooks (25 by default); CPU milliseconds per step (min / median / max).

    python benchmarks/telemetry_cost.py
    python benchmarks/telemetry_cost.py --pairs 1 --warmup 0     # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def build():
    from deepsynth.data import load_sample_dataset
    from deepsynth.data.collate import DataCollator, build_example
    from deepsynth.models.loading import load_model_and_processor
    from deepsynth.models.feature_cache import CachedFeatureCollator, precompute_image_features
    from deepsynth.training.lora_config import get_lora_preset
    from deepsynth.training.targets import apply_lora, resolve_targets

    loaded = load_model_and_processor(None)
    model = apply_lora(loaded.model, resolve_targets(loaded.model, get_lora_preset("tiny_data"), loaded.family))
    rows = load_sample_dataset("train", max_samples=2)
    examples = [build_example(loaded.processor, r["image"], r["summary"]) for r in rows]
    precompute_image_features(model, examples)
    return model, loaded.family, CachedFeatureCollator(DataCollator(loaded.processor))(examples)


def step(model, batch) -> float:
    started = time.process_time()
    model.zero_grad()
    model(**batch).loss.backward()
    return time.process_time() - started


def main(argv=None) -> int:
    from deepsynth.training.moe import install_moe

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, family, batch = build()
    model.train()
    for _ in range(args.warmup):
        step(model, batch)
    results: dict[str, list[float]] = {"plain": [], "telemetry": []}
    for index in range(args.pairs):
        for mode in (("plain", "telemetry") if index % 2 == 0 else ("telemetry", "plain")):
            moe = install_moe(model, family) if mode == "telemetry" else None
            results[mode].append(step(model, batch))
            if moe:
                moe.remove()
    for mode, values in results.items():
        print(mode, "CPU-ms min/med/max", round(min(values) * 1e3), round(statistics.median(values) * 1e3),
              round(max(values) * 1e3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
