"""GPU check: DeepSeek-OCR-2 at its real dimensions, random bf16 weights, a few LoRA training steps
per DeepSynth preset; prints tokens/s, model FLOPs utilisation and peak memory.

No network, no checkpoint: the architecture comes from the config shipped with DeepSynth
(``resolve_config("deepseek-community/DeepSeek-OCR-2")``) and the weights are random, which is all
throughput and memory depend on. Each preset is applied to the same base model (LoRA through
DeepSynth's own target resolution, then unloaded), trained for ``--steps`` timed optimizer
updates after ``--warmup`` untimed ones, the way DeepSynth trains: vision features computed once
(frozen-encoder feature cache), AdamW on the adapter, batch ``--batch-size`` of one 1024-px global
view + ``--text-tokens`` target tokens per sample.

FLOPs (documented in docs/performance.md): model FLOPs per step = 6 × N_active × tokens, where
N_active = the language-model parameters one token goes through (attention, dense MLP, shared
experts, router, top-k of the routed experts, lm_head; not the embedding lookup) plus the LoRA
parameters, and tokens = every input position (image positions included). 6 = 2 (forward) + 4
(backward); with frozen base weights the backward skips their weight gradients, so the hardware
does about 4 × N_active × tokens — ``hardware_mfu`` reports that figure. The vision encoder runs
once per page (cache), not per step, and is not counted. MFU = model FLOPs / step time / the GPU's
dense bf16 peak (H100 SXM / H200: 989 TFLOP/s; H100 PCIe: 756; A100: 312; --peak-tflops overrides).

    bash benchmarks/gpu_check.sh                      # on the GPU machine (< 5 minutes)
    python benchmarks/gpu_check.py --dry-run          # tiny config on CPU, to check the script
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

PRESETS = ("tiny_data", "balanced", "high_capacity_moe")
PEAK_TFLOPS = (("h200", 989.0), ("h100 pcie", 756.0), ("h100", 989.0), ("a100", 312.0), ("l40s", 362.0),
               ("a10g", 125.0))


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    for key, value in PEAK_TFLOPS:
        if key in name:
            return value
    return None


def build_model(dry_run: bool, device: torch.device, dtype: torch.dtype):
    from transformers import DeepseekOcr2ForConditionalGeneration

    from deepsynth.models.resolver import resolve_config
    from deepsynth.models.device import choose_experts_implementation
    from deepsynth.models.loading import freeze_vision_modules

    if dry_run:
        from deepsynth.models import tiny

        config = tiny.embedded_config()
    else:
        config = resolve_config("deepseek-community/DeepSeek-OCR-2").config
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = DeepseekOcr2ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.set_experts_implementation(choose_experts_implementation(device))
    freeze_vision_modules(model, "deepseek_ocr2")
    return model


def make_batch(model, batch_size: int, text_tokens: int, device: torch.device, dtype: torch.dtype):
    """Cached vision features + input ids with the matching number of image tokens."""
    from deepsynth.models.feature_cache import CachedImageFeatures

    config = model.config
    size = config.vision_config.sam_config.image_size
    generator = torch.Generator(device="cpu").manual_seed(0)
    pixels = torch.rand(batch_size, 3, size, size, generator=generator).to(device, dtype) * 2 - 1
    model.eval()
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        features = [f.detach() for f in model.get_image_features(pixel_values=pixels).pooler_output]
        if device.type == "cuda":
            torch.cuda.synchronize()
        vision_seconds = time.perf_counter() - started
    image_tokens = features[0].shape[0]
    vocab = config.text_config.vocab_size
    bos = config.text_config.bos_token_id or 0
    text = torch.randint(10, min(vocab, 100_000), (batch_size, text_tokens), generator=generator)
    image = torch.full((batch_size, image_tokens), config.image_token_id)
    input_ids = torch.cat([torch.full((batch_size, 1), bos), image, text], dim=1).to(device)
    labels = input_ids.clone()
    labels[:, : 1 + image_tokens] = -100
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
             "mm_encoder_outputs": {"image": CachedImageFeatures(pooler_output=features)}}
    return batch, image_tokens, vision_seconds


def active_parameters(model) -> int:
    """Parameters one token goes through in the language model (routed experts: top-k of E)."""
    text = model.config.text_config
    top_k, experts = text.num_experts_per_tok, text.n_routed_experts
    total = 0.0
    for name, parameter in model.named_parameters():
        if "vision_tower" in name or "multi_modal_projector" in name or "view_separator" in name:
            continue
        if "embed_tokens" in name:
            continue
        share = top_k / experts if (".mlp.experts." in name and "lora" not in name) else 1.0
        total += parameter.numel() * share
    return int(total)


def train_preset(model, preset: str, batch, steps: int, warmup: int, device: torch.device) -> dict:
    from deepsynth.training.lora_config import get_lora_preset
    from deepsynth.training.targets import apply_lora, resolve_targets

    lora = get_lora_preset(preset)
    targets = resolve_targets(model, lora, "deepseek_ocr2")
    peft_model = apply_lora(model, targets)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    tokens = int(batch["attention_mask"].sum())
    active = active_parameters(peft_model)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    peft_model.train()
    times, losses = [], []
    for step in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = peft_model(**batch).loss
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - started)
        losses.append(loss.detach().item())
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    model = peft_model.unload()  # back to the bare base model for the next preset
    median = sorted(times)[len(times) // 2]
    return {
        "preset": preset, "trainable": sum(p.numel() for p in trainable), "active_params": active,
        "tokens_per_step": tokens, "step_seconds": {"min": min(times), "median": median, "max": max(times)},
        "tokens_per_s": tokens / median, "model_tflops_per_s": 6 * active * tokens / median / 1e12,
        "hardware_tflops_per_s": 4 * active * tokens / median / 1e12, "peak_memory_gib": peak,
        "loss_first_last": [losses[0], losses[-1]],
    }


def compare_experts(model, preset: str, batch, steps: int, device: torch.device) -> dict:
    """eager vs grouped_mm under LoRA (routed experts included): step time and |Δ logits| vs eager.

    batched_mm is left out: it copies the expert weights per (token, expert) slot, tens of GB per
    MoE layer at these dimensions.
    """
    from deepsynth.training.lora_config import get_lora_preset
    from deepsynth.training.targets import apply_lora, resolve_targets

    lora = get_lora_preset(preset)
    lora.include_routed_experts, lora.dropout = True, 0.0
    peft_model = apply_lora(model, resolve_targets(model, lora, "deepseek_ocr2"))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    results, reference = {}, None
    chosen = model.config.text_config._experts_implementation
    for implementation in ("eager", "grouped_mm"):
        model.set_experts_implementation(implementation)
        peft_model.eval()
        with torch.no_grad():
            logits = peft_model(**batch).logits.float()
        reference = logits if reference is None else reference
        peft_model.train()
        times = []
        for step in range(1 + steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            peft_model.zero_grad(set_to_none=True)
            peft_model(**batch).loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step:
                times.append(time.perf_counter() - started)
        results[implementation] = {"train_step_seconds_median": sorted(times)[len(times) // 2],
                                   "max_abs_logits_diff_vs_eager": (logits - reference).abs().max().item()}
    model.set_experts_implementation(chosen)
    peft_model.unload()
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny config (the embedded model's), CPU unless CUDA")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default=None,
                        help="default: bf16 on CUDA, fp32 on the CPU (--dry-run --dtype bf16 checks the bf16 path)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (TFLOP/s)")
    parser.add_argument("--no-compare-experts", dest="compare_experts", action="store_false",
                        help="skip the eager vs grouped_mm comparison")
    parser.add_argument("--json", default=None, help="write the results here (default: $OUT/gpu_check.json)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.dry_run and device.type != "cuda":
        print("no CUDA device: use --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(args.dtype) or (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = build_model(args.dry_run, device, dtype)
    built = time.perf_counter() - started
    batch, image_tokens, vision_seconds = make_batch(model, args.batch_size, args.text_tokens, device, dtype)
    peak = peak_tflops(device, args.peak_tflops)
    header = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype), "dry_run": args.dry_run, "torch": torch.__version__,
        "experts_implementation": model.config.text_config._experts_implementation,
        "total_params": sum(p.numel() for p in model.parameters()), "build_seconds": round(built, 1),
        "batch_size": args.batch_size, "image_tokens_per_sample": image_tokens,
        "text_tokens_per_sample": args.text_tokens, "vision_encoder_seconds_per_batch": vision_seconds,
        "peak_tflops": peak,
    }
    print(json.dumps(header, indent=1), flush=True)
    results = []
    for preset in args.presets.split(","):
        result = train_preset(model, preset, batch, args.steps, args.warmup, device)
        if peak:
            result["mfu"] = result["model_tflops_per_s"] / peak
            result["hardware_mfu"] = result["hardware_tflops_per_s"] / peak
        results.append(result)
        mfu = f"{result['mfu']:.1%}" if "mfu" in result else "n/a"
        memory = f"{result['peak_memory_gib']:.1f} GiB" if result["peak_memory_gib"] is not None else "n/a (CPU)"
        print(f"{preset:<18} trainable {result['trainable']:>12,}  step {result['step_seconds']['median']:.3f} s  "
              f"{result['tokens_per_s']:>9.0f} tokens/s  {result['model_tflops_per_s']:7.1f} model TFLOP/s  "
              f"MFU {mfu}  peak {memory}", flush=True)
    experts = {}
    if args.compare_experts:
        experts = compare_experts(model, "balanced", batch, max(2, args.steps // 2), device)
        for implementation, values in experts.items():
            print(f"experts {implementation:<11} (balanced + routed-expert LoRA) step "
                  f"{values['train_step_seconds_median']:.3f} s, max |logits - eager| "
                  f"{values['max_abs_logits_diff_vs_eager']:.2e}", flush=True)
    total = time.perf_counter() - started
    print(f"total {total:.0f} s", flush=True)
    target = args.json or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None)
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps({**header, "results": results, "experts": experts, "seconds": total}, indent=2),
                                encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
