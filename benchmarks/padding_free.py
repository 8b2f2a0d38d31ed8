"""Padding-free (flattened) vs padded batches on the CPU: exactness, the KV-cache trap, and step time.

transformers' ``DataCollatorWithFlattening`` concatenates a batch into one row with ``position_ids``
restarting at 0 for each sample; with sdpa/eager attention, transformers (masking_utils) then
builds a block-diagonal causal mask so that samples do not attend to each other — but only when
the forward has no attention mask and no KV cache. This script builds a model with a seeded random
init and the tiny_data LoRA preset (dropout 0), makes a batch of random tokens of the given
lengths whose first ``--prefix`` tokens are unlabelled (image + prompt positions), and:

* checks that the packed loss equals the padded one (``use_cache=False``), and reports the packed
  loss with the model's default ``use_cache=True`` (the cache disables the block-diagonal mask);
* times training steps (forward + backward, loss on labelled positions) padded and packed,
  alternating, CPU seconds per step, min / median / max of the per-round speed ratio packed / padded.

Vision is not run (with the feature cache a training step is the language model's).

    python benchmarks/padding_free.py --model embedded --lengths 247,246,255 --prefix 150 --rounds 5
    python benchmarks/padding_free.py --model large --lengths 343,583 --prefix 283 --rounds 5
    python benchmarks/padding_free.py --smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe, large_config, machine, write_json  # noqa: E402


def build(name: str, pages: int):
    """(LoRA model, features): random-token samples, or ``pages`` bundled sample pages on the shipped embedded model."""
    from transformers import DeepseekOcr2ForConditionalGeneration

    from deepsynth.models import tiny
    from deepsynth.training.lora_config import get_lora_preset
    from deepsynth.training.targets import apply_lora, resolve_targets

    torch.manual_seed(0)
    features = None
    if pages:
        from deepsynth.data import load_sample_dataset
        from deepsynth.data.collate import build_example
        from deepsynth.models.loading import load_model_and_processor

        loaded = load_model_and_processor(None)
        model = loaded.model
        features = [build_example(loaded.processor, row["image"], row["summary"])
                    for row in load_sample_dataset("train", max_samples=pages)]
    else:
        model = DeepseekOcr2ForConditionalGeneration(large_config() if name == "large" else tiny.embedded_config())
    lora = get_lora_preset("tiny_data")
    lora.dropout = 0.0  # padded and packed forwards must see the same network
    model = apply_lora(model, resolve_targets(model, lora, "deepseek_ocr2"))
    with torch.no_grad():  # LoRA B is zero at init: give every adapter a gradient-carrying, non-zero delta
        for parameter_name, parameter in model.named_parameters():
            if "lora_B" in parameter_name:
                parameter.normal_(0, 0.02)
    return model, features


def token_features(lengths: list[int], prefix: int, vocab: int) -> list[dict]:
    """Samples of random tokens whose first ``prefix`` tokens are unlabelled (image + prompt positions)."""
    generator = torch.Generator().manual_seed(1)
    features = []
    for length in lengths:
        input_ids = torch.randint(4, vocab, (length,), generator=generator)
        labels = input_ids.clone()
        labels[:prefix] = -100
        features.append({"input_ids": input_ids, "labels": labels})
    return features


def batches(features: list[dict]) -> tuple[dict, dict, torch.Tensor]:
    """(padded batch, packed batch, number of labelled next tokens); image inputs are concatenated in sample order."""
    from transformers import DataCollatorWithFlattening

    lengths = [len(f["input_ids"]) for f in features]
    longest = max(lengths)

    def pad(key: str, value: int) -> torch.Tensor:
        return torch.stack([torch.nn.functional.pad(f[key], (0, longest - len(f[key])), value=value) for f in features])

    images = {key: torch.cat([f[key] for f in features]) for key in features[0]
              if key not in ("input_ids", "labels", "attention_mask")}
    padded = {"input_ids": pad("input_ids", 2), "labels": pad("labels", -100),
              "attention_mask": torch.stack([torch.arange(longest) < length for length in lengths]).long(), **images}
    text = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]
    packed = {**DataCollatorWithFlattening()(text), **images}
    items = torch.tensor(sum(int((f["labels"][1:] != -100).sum()) for f in features))
    return padded, packed, items


def measure(model_name: str, lengths: list[int], prefix: int, pages: int, rounds: int, attention: str = "sdpa") -> dict:
    """Exactness (loss, LoRA gradients), the KV-cache trap and paired step times of one batch shape."""
    from deepsynth.models.logits import with_labelled_logits

    model, features = build(model_name, pages)
    model.get_base_model().set_attn_implementation(attention)
    features = features or token_features(lengths, prefix, model.get_output_embeddings().weight.shape[0])
    padded, packed, items = batches(features)
    model.train()

    def step(batch: dict, use_cache: bool = False) -> tuple[float, float, dict]:
        model.zero_grad(set_to_none=True)
        started = time.process_time()
        loss = model(**with_labelled_logits(batch), use_cache=use_cache, num_items_in_batch=items).loss
        loss.backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        return time.process_time() - started, float(loss.detach()), grads

    (_, padded_loss, padded_grads), (_, packed_loss, packed_grads) = step(padded), step(packed)
    cache_loss = step(packed, use_cache=True)[1]
    grad_difference = max(float((packed_grads[n] - g).norm() / g.norm()) for n, g in padded_grads.items())
    times: dict[str, list[float]] = {"padded": [], "packed": []}
    for index in range(rounds):
        for name in ("padded", "packed") if index % 2 == 0 else ("packed", "padded"):
            times[name].append(step(padded if name == "padded" else packed)[0])
    lengths = [len(f["input_ids"]) for f in features]
    return {
        "model": "embedded (shipped), bundled pages" if pages else model_name, "attention": attention,
        "lengths": lengths, "prefix": prefix,
        "padded_tokens": max(lengths) * len(lengths), "packed_tokens": sum(lengths),
        "loss": {"padded": padded_loss, "packed": packed_loss, "packed_with_kv_cache": cache_loss},
        "lora_grad_max_relative_difference": grad_difference,
        "exact": abs(packed_loss - padded_loss) <= 1e-5 * abs(padded_loss) and grad_difference <= 1e-4,
        "cpu_seconds_per_step": {name: describe(values) for name, values in times.items()},
        "speed_packed_over_padded": describe([a / b for a, b in zip(times["padded"], times["packed"])]),
    }


def report(case: dict) -> None:
    loss, speed, times = case["loss"], case["speed_packed_over_padded"], case["cpu_seconds_per_step"]
    print(f"{case['model']}, {case['attention']}: lengths {case['lengths']}: {case['padded_tokens']} padded vs {case['packed_tokens']} "
          f"packed tokens; loss padded {loss['padded']:.6f}, packed {loss['packed']:.6f}, LoRA grads "
          f"{case['lora_grad_max_relative_difference']:.1e} relative ({'exact' if case['exact'] else 'DIFFERENT'}); "
          f"packed with the KV cache on: loss {loss['packed_with_kv_cache']:.6f}")
    print(f"  CPU s/step padded {times['padded']['median']:.3f}, packed {times['packed']['median']:.3f} (medians); "
          f"speed packed / padded min {speed['min']:.3f} median {speed['median']:.3f} max {speed['max']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("embedded", "large"), default="embedded")
    parser.add_argument("--lengths", default="247,246,255", help="tokens of each sample of the batch")
    parser.add_argument("--prefix", type=int, default=150, help="unlabelled leading tokens (image + prompt)")
    parser.add_argument("--pages", type=int, default=0,
                        help="use this many bundled sample pages (real images, shipped embedded model) instead of "
                             "random tokens; --model, --lengths and --prefix are then ignored")
    parser.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    parser.add_argument("--smoke", action="store_true", help="2 short random samples, then 2 pages; 1 round each")
    args = parser.parse_args(argv)
    lengths = [int(part) for part in args.lengths.split(",")]
    shapes = [("embedded", [40, 60], 20, 0, 1), ("embedded", [], 0, 2, 1)] if args.smoke else [
        (args.model, lengths, args.prefix, args.pages, args.rounds, args.attention)]
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            cases = [measure(*shape) for shape in shapes]
    finally:
        torch.set_num_threads(threads)
    for case in cases:
        report(case)
    write_json(args.json, {"command": " ".join([Path(sys.executable).name, *sys.argv]), "settings": vars(args),
                           "machine": machine(), "cases": cases})
    return 0 if all(case["exact"] for case in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
