"""Experts implementations of transformers (eager loop / batched_mm / grouped_mm) under DeepSynth's LoRA.

For each model, LoRA (rank 16, no dropout) goes on attention, dense MLP + shared experts
(``target_modules``), the router (``target_parameters`` mlp.gate.weight) and the routed experts
(``target_parameters`` experts.gate_up_proj / experts.down_proj — PEFT's ParamWrapper, which
parametrizes the fused 3-D tensors). LoRA B matrices are randomised so every adapter changes the
output. Then, for each implementation (``model.set_experts_implementation``):

* numerics vs eager: max |Δ logits|, |Δ loss|, and per trainable tensor max |Δ grad| relative to
  the largest |grad| of that tensor (worst over tensors);
* time of a training step (forward + backward, train mode), of a no-grad forward of the same batch
  (evaluation), and of a one-token forward (the shape of a decoding step), alternating the
  implementations round by round, reported as min / median / max.

Vision features are computed once (deepsynth.models.feature_cache) so the timings are the
language model's.

    python benchmarks/moe_experts.py --model embedded --rounds 15 --json benchmarks/results/moe_embedded.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe, machine, model_dir, write_json  # noqa: E402

ALL_IMPLEMENTATIONS = ("eager", "batched_mm", "grouped_mm")
IMPLEMENTATIONS = ALL_IMPLEMENTATIONS


def build(model_name: str | None, batch_size: int):
    from deepsynth.data import load_sample_dataset
    from deepsynth.data.collate import DataCollator, build_example
    from deepsynth.models.loading import load_model_and_processor
    from deepsynth.models.feature_cache import CachedFeatureCollator, precompute_image_features
    from deepsynth.training.lora_config import AdapterSettings
    from deepsynth.training.targets import apply_lora, resolve_targets

    torch.manual_seed(0)
    loaded = load_model_and_processor(model_name, dtype="float32")
    lora = AdapterSettings(rank=16, alpha=32, dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                      "gate"],
                      include_routed_experts=True)
    targets = resolve_targets(loaded.model, lora, loaded.family)
    model = apply_lora(loaded.model, targets)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    rows = load_sample_dataset("train", max_samples=batch_size)
    examples = [build_example(loaded.processor, row["image"], row["summary"]) for row in rows]
    precompute_image_features(model, examples)
    batch = CachedFeatureCollator(DataCollator(loaded.processor))(examples)
    one_token = {"input_ids": batch["input_ids"][:1, :1], "attention_mask": batch["attention_mask"][:1, :1]}
    groups = sorted({name.split(".lora_")[0].rsplit(".", 2)[-2] if "experts" in name else name.split(".")[-3]
                     for name, p in model.named_parameters() if p.requires_grad})
    return model, batch, one_token, targets, groups


def train_step(model, batch):
    model.zero_grad(set_to_none=True)
    output = model(**batch)
    output.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return output, grads


def check_numerics(model, batch) -> dict:
    results = {}
    model.eval()  # no dropout anywhere: identical computations up to the experts kernel
    reference = None
    for implementation in IMPLEMENTATIONS:
        model.set_experts_implementation(implementation)
        output, grads = train_step(model, batch)
        if reference is None:
            reference = (output.logits.detach(), output.loss.item(), grads)
        ref_logits, ref_loss, ref_grads = reference
        worst_name, worst = None, 0.0
        for name, grad in ref_grads.items():
            scale = grad.abs().max().item() or 1.0
            difference = (grads[name] - grad).abs().max().item() / scale
            if difference >= worst:
                worst_name, worst = name, difference
        results[implementation] = {
            "max_abs_logits_diff": (output.logits.detach() - ref_logits).abs().max().item(),
            "loss": output.loss.item(), "abs_loss_diff": abs(output.loss.item() - ref_loss),
            "max_rel_grad_diff": worst, "worst_grad": worst_name,
            "grads_compared": len(ref_grads),
            "same_grad_set": set(grads) == set(ref_grads),
        }
    return results


def time_once(model, implementation, batch, one_token) -> dict[str, float]:
    model.set_experts_implementation(implementation)
    model.train()
    cpu_started, started = time.process_time(), time.perf_counter()
    train_step(model, batch)
    train = time.perf_counter() - started
    train_cpu = time.process_time() - cpu_started
    model.eval()
    with torch.no_grad():
        started = time.perf_counter()
        model(**batch)
        forward = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(5):
            model(**one_token)
        decode = (time.perf_counter() - started) / 5
    return {"train_step_s": train, "train_step_cpu_s": train_cpu, "forward_s": forward,
            "one_token_forward_s": decode}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("embedded", "large"), default="embedded")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--implementations", default=",".join(ALL_IMPLEMENTATIONS),
                        help="comma-separated; eager first (the reference). batched_mm copies the expert weights "
                             "per token slot: >12 GB on the large model")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    global IMPLEMENTATIONS
    IMPLEMENTATIONS = tuple(args.implementations.split(","))
    if IMPLEMENTATIONS[0] != "eager":
        parser.error("--implementations must start with eager (the reference)")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, batch, one_token, targets, groups = build(model_dir(args.model), args.batch_size)
    tokens = int(batch["attention_mask"].sum())
    numerics = check_numerics(model, batch)
    for implementation in IMPLEMENTATIONS:  # warm-up
        time_once(model, implementation, batch, one_token)
    samples: dict[str, dict[str, list[float]]] = {i: {} for i in IMPLEMENTATIONS}
    for round_index in range(args.rounds):
        order = IMPLEMENTATIONS if round_index % 2 == 0 else IMPLEMENTATIONS[::-1]
        for implementation in order:
            for key, value in time_once(model, implementation, batch, one_token).items():
                samples[implementation].setdefault(key, []).append(value)
    timings = {i: {k: describe(v) for k, v in s.items()} for i, s in samples.items()}
    result = {"command": " ".join(["python", *sys.argv]), "model": args.model, "batch_size": args.batch_size, "tokens_per_batch": tokens,
              "rounds": args.rounds, "lora": targets.to_dict()["target_parameters"][:4] + ["…"],
              "adapted": groups, "numerics_vs_eager": numerics, "timings": timings, "machine": machine()}
    write_json(args.json, result)
    print(f"model {args.model}: batch {args.batch_size} ({tokens} tokens), {args.rounds} alternating rounds")
    print(f"{'implementation':<12} {'train step ms':>18} {'train step CPU-ms':>18} {'forward ms':>18} "
          f"{'1-token fwd ms':>16} {'max|dlogits|':>13} {'max rel dgrad':>14}   (min/median/max)")
    for implementation in IMPLEMENTATIONS:
        t = timings[implementation]
        cells = [f"{t[k]['min'] * 1e3:.0f}/{t[k]['median'] * 1e3:.0f}/{t[k]['max'] * 1e3:.0f}"
                 for k in ("train_step_s", "train_step_cpu_s", "forward_s", "one_token_forward_s")]
        n = numerics[implementation]
        print(f"{implementation:<12} {cells[0]:>18} {cells[1]:>18} {cells[2]:>18} {cells[3]:>16} "
              f"{n['max_abs_logits_diff']:>13.2e} {n['max_rel_grad_diff']:>14.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
