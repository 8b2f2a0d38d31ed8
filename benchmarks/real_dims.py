"""DeepSeek-OCR (v1) and DeepSeek-OCR-2 at their real dimensions, end to end, on this machine.

Not part of CI (minutes and ~16 GB of RAM per case); ``--tiny`` runs the same code on shrunken
configs in seconds and is the suite's smoke run. Each case — a family and a DeepSynth preset — runs
in its own process (``--all`` spawns them one after the other, under ``nice``, each only once
``MemAvailable`` reaches ``--min-free-gb``):

1. build the model from its real config (``deepseek-ai/DeepSeek-OCR`` through transformers'
   ``unlimited_ocr``, ``deepseek-community/DeepSeek-OCR-2``) with random weights — no download;
   QLoRA presets go through DeepSynth's quantized loading path (bitsandbytes, fused experts included);
2. one page at the real resolution (an A4 page rendered at 1240x1754 px): v1 in its Base mode
   (1024 px global view), v2 with its own processor (1024 px global view + 768 px tiles); vision
   tokens per page; the frozen encoder runs once per page (DeepSynth's feature cache);
3. LoRA from the preset through DeepSynth's target resolution; trainable parameters counted and
   compared with the meta-device count (``count_trainable_params`` / ``count_by_group``);
4. two training updates (AdamW, batch 1): seconds per update, loss;
5. adapter save → reload onto the base → logits identical (max |Δ|);
6. merge (a QLoRA base is dequantized first) and export in the serving layout (v1: DeepSeek-OCR's own
   checkpoint, bf16 shards; v2: transformers-native), written to a temporary folder and removed.

Peak RSS is the process's ``ru_maxrss``. On this CPU the models run in fp32: bf16 is emulated here
and ~4x slower (shared/notes/architecture-facts.md); on a GPU, bf16.

    nice -n 10 python benchmarks/real_dims.py --all --json benchmarks/results/real_dims_cpu.json
    python benchmarks/real_dims.py --case deepseek_ocr:qlora_4bit       # one case, this process
    python benchmarks/real_dims.py --all --tiny                          # smoke run (seconds)
    bash benchmarks/gpu_check.sh --real-dims                             # the same cases on a GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# torch, transformers and common (which imports torch) are imported inside the functions that use
# them: the --all driver only starts one process per case and stays light.
BENCH_DIR = Path(__file__).resolve().parent

FAMILIES = {"deepseek_ocr": "deepseek-ai/DeepSeek-OCR", "deepseek_ocr2": "deepseek-community/DeepSeek-OCR-2"}
PRESETS = ("tiny_data", "high_capacity_moe", "qlora_4bit")
CASES = tuple(f"{family}:{preset}" for family in FAMILIES for preset in PRESETS)
RESULT_PREFIX = "REAL_DIMS_RESULT "
PAGE_SIZE = (1240, 1754)  # A4 at 150 dpi


# --- models and processors ---------------------------------------------------------------------------

def tiny_config(family: str):
    """A shrunken config of the same class (the smoke run): real code paths, seconds instead of minutes."""
    from transformers import UnlimitedOcrConfig

    from deepsynth.models import tiny

    if family == "deepseek_ocr2":
        return tiny.embedded_config()
    text = dict(vocab_size=tiny.VOCAB_SIZE, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4,
                n_shared_experts=1, num_experts_per_tok=2, mlp_layer_types=["dense", "sparse"],
                max_position_embeddings=2048, sliding_window=2048, bos_token_id=0, eos_token_id=1)
    vision = {"sam_config": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, global_attn_indexes=[1],
                                 downsample_channels=[32, 64]),
              "encoder_config": dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=14,
                                     image_size=224)}
    return UnlimitedOcrConfig(text_config=text, vision_config=vision)


def build_processor(family: str, tokenizer, tiny_run: bool):
    """The family's processor at its real resolution (v1: Base mode 1024 px; v2: 1024 px + 768 px tiles)."""
    from transformers import DeepseekOcr2Processor
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import DeepseekOcr2ImageProcessorPil

    from deepsynth.models import tiny
    from deepsynth.models.processors import build_deepseek_ocr_processor

    if family == "deepseek_ocr":
        size = 256 if tiny_run else 1024
        return build_deepseek_ocr_processor(tokenizer, {"candidate_resolutions": [[size, size]]})
    if tiny_run:
        return tiny.build_processor(tokenizer)
    return DeepseekOcr2Processor(image_processor=DeepseekOcr2ImageProcessorPil(), tokenizer=tokenizer)


def build_model(family: str, config, dtype: torch.dtype, device: torch.device):
    """Random weights (seeded) at ``config``'s dimensions, frozen vision side, DeepSynth's experts choice."""
    import torch
    from transformers import DeepseekOcr2ForConditionalGeneration, UnlimitedOcrForConditionalGeneration

    from deepsynth.models.device import choose_experts_implementation
    from deepsynth.models.loading import freeze_vision_modules

    model_class = UnlimitedOcrForConditionalGeneration if family == "deepseek_ocr" else DeepseekOcr2ForConditionalGeneration
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = model_class(config)
    finally:
        torch.set_default_dtype(previous)
    model.set_experts_implementation(choose_experts_implementation(device))
    freeze_vision_modules(model, family)
    return model.eval()


def quantize(model, family: str, quantization: str, device: torch.device, compute: torch.dtype):
    """DeepSynth's QLoRA loading path for a model held in memory (transformers' bitsandbytes quantizer)."""
    from deepsynth.models.quantization import load as q

    extra = q.from_pretrained_kwargs(quantization, family, compute, device)
    quantized = q.quantize_in_memory(model, extra)
    del model
    gc.collect()
    return q.prepare_quantized(quantized, quantization, family)


# --- the steps of one case -----------------------------------------------------------------------------

def page_example(processor, family: str, tiny_run: bool) -> tuple[dict[str, Any], int, int]:
    """One training example on a page at the real resolution: (example, vision tokens, text tokens)."""
    from deepsynth.data import load_sample_dataset
    from deepsynth.data.collate import build_example
    from deepsynth.data.render import render_document

    rows = load_sample_dataset("train", max_samples=4)
    text = "\n\n".join(rows["text"])
    size = (256, 256) if tiny_run else PAGE_SIZE
    page = render_document(text, width=size[0], height=size[1], font_size=8 if tiny_run else 22,
                           margin=8 if tiny_run else 60)
    example = build_example(processor, page, rows["summary"][0], max_length=4096)
    image_id = processor.image_token_id
    vision = int(sum(1 for token in example["input_ids"] if int(token) == image_id))
    return example, vision, len(example["input_ids"]) - vision


def exact_trainable(family: str, config, preset: str, model) -> dict[str, Any]:
    """Trainable parameters per group, on the model and on a meta-device build of the same config."""
    import torch
    from transformers import DeepseekOcr2ForConditionalGeneration, UnlimitedOcrForConditionalGeneration

    from deepsynth.training.lora_config import get_lora_preset
    from deepsynth.training.targets import apply_lora, count_by_group, resolve_targets

    model_class = UnlimitedOcrForConditionalGeneration if family == "deepseek_ocr" else DeepseekOcr2ForConditionalGeneration
    with torch.device("meta"):
        meta = model_class(config)
    meta = apply_lora(meta, resolve_targets(meta, get_lora_preset(preset), family))
    on_meta = count_by_group(meta, family)
    on_model = count_by_group(model, family)
    return {"total": sum(on_model.values()), "by_group": on_model, "meta_total": sum(on_meta.values()),
            "equal_to_meta": on_model == on_meta}


def train_updates(model, batch, updates: int, device: torch.device) -> dict[str, list[float]]:
    """``updates`` AdamW updates (batch 1): wall and CPU seconds of each (CPU: all threads of this
    process, insensitive to waiting for a core on a shared machine) and its loss."""
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    seconds, cpu, losses = [], [], []
    for _ in range(updates):
        _sync(device)
        started, cpu_started = time.perf_counter(), time.process_time()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        seconds.append(round(time.perf_counter() - started, 2))
        cpu.append(round(time.process_time() - cpu_started, 2))
        losses.append(round(loss.item(), 4))
    del optimizer
    return {"seconds_per_update": seconds, "cpu_seconds_per_update": cpu, "losses": losses}


def to_device(value, device: torch.device):
    """Tensors anywhere in a batch (cached vision features included) moved to ``device``."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return type(value)(**{k: to_device(v, device) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def reload_check(model, batch, folder: Path) -> tuple[Any, dict[str, Any]]:
    """Save the adapter, reload it onto the bare base, compare logits. Returns (reloaded model, report)."""
    import torch

    from deepsynth.models.adapters import attach_adapter

    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits.float().cpu()
    started = time.perf_counter()
    model.save_pretrained(str(folder))
    saved = time.perf_counter() - started
    base = model.unload()  # the base model without any LoRA layer
    reloaded = attach_adapter(base, folder).eval()
    with torch.no_grad():
        after = reloaded(**batch).logits.float().cpu()
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return reloaded, {"save_seconds": round(saved, 2), "adapter_bytes": size,
                      "max_abs_logits_diff": (before - after).abs().max().item(), "identical": torch.equal(before, after)}


def merge_and_export(reloaded, family: str, quantization: str | None, folder: Path, tiny_run: bool) -> dict[str, Any]:
    """Merge (through the dequantized base for QLoRA) and write the serving layout into ``folder``.

    The same path as ``deepsynth export --merge`` (deepsynth.evaluation.export): a QLoRA base is
    dequantized, the adapter attached to it again, then merged.
    """
    import torch

    from deepsynth.models.adapters import attach_adapter
    from deepsynth.evaluation.deepseek_ocr_layout import deepseek_vl_v2_config, iter_deepseek_ocr_tensors, write_safetensors_shards
    from deepsynth.models.quantization.dequantize import dequantize_model

    adapter = folder / "adapter"
    started = time.perf_counter()
    if quantization:
        base = dequantize_model(reloaded.unload())
        reloaded = attach_adapter(base, adapter)
    merged = reloaded.merge_and_unload()
    merge_seconds = time.perf_counter() - started
    started = time.perf_counter()
    out = folder / "merged"
    out.mkdir()
    shard = "200MB" if tiny_run else "1GB"  # one shard at a time is cast to bf16: keep them small
    if family == "deepseek_ocr":
        index = write_safetensors_shards(iter_deepseek_ocr_tensors(merged), out, shard)
        config = deepseek_vl_v2_config(merged.config)
        config["torch_dtype"] = "bfloat16"
        (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        tensors, layout = len(index["weight_map"]), "deepseek-ocr (own checkpoint)"
    else:
        merged.to(torch.bfloat16).save_pretrained(str(out), max_shard_size=shard)
        tensors, layout = len(merged.state_dict()), "transformers-native"
    written = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return {"merge_seconds": round(merge_seconds, 2), "export_seconds": round(time.perf_counter() - started, 2),
            "export_gb": round(written / 1e9, 2), "export_tensors": tensors, "layout": layout}


def build_case_model(family: str, lora, config, dtype, device, result: dict[str, Any]):
    """The case's base model: random weights, quantized through DeepSynth's QLoRA path when asked."""
    import torch

    from deepsynth.models.quantization.report import quantization_report

    # QLoRA: built in bf16 (half the memory before quantizing), computed in the run's dtype.
    model = build_model(family, config, torch.bfloat16 if lora.quantization else dtype, device)
    result["params"] = sum(p.numel() for p in model.parameters())
    if lora.quantization:
        model = quantize(model, family, lora.quantization, device, dtype)
        result["quantized"] = quantization_report(model)
    return model


def run_case(case: str, args) -> dict[str, Any]:
    """One family × preset, every step above; returns the measurements."""
    import torch

    from deepsynth.data.collate import DataCollator
    from deepsynth.models import tiny
    from deepsynth.models.quantization.report import quantization_report
    from deepsynth.models.resolver import resolve_config
    from deepsynth.models.feature_cache import CachedFeatureCollator, precompute_image_features
    from deepsynth.training.lora_config import get_lora_preset
    from deepsynth.training.targets import apply_lora, resolve_targets

    sys.path.insert(0, str(BENCH_DIR))
    from common import machine, peak_gpu_mib, peak_rss_mib

    family, preset = case.split(":")
    lora = get_lora_preset(preset)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if (args.dtype or ("bf16" if device.type == "cuda" else "fp32")) == "bf16" else torch.float32
    config = tiny_config(family) if args.tiny else resolve_config(FAMILIES[family]).config
    tokenizer = tiny.shipped_tokenizer()
    config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")  # as the loader aligns it
    result: dict[str, Any] = {"case": case, "family": family, "preset": preset, "tiny": args.tiny,
                              "device": str(device), "dtype": str(dtype).removeprefix("torch."),
                              "quantization": lora.quantization}
    started = time.perf_counter()
    model = build_case_model(family, lora, config, dtype, device, result)
    result.update(build_seconds=round(time.perf_counter() - started, 1), rss_after_build_gb=round(peak_rss_mib() / 1024, 2))
    processor = build_processor(family, tokenizer, args.tiny)
    example, vision_tokens, text_tokens = page_example(processor, family, args.tiny)
    result.update(vision_tokens_per_page=vision_tokens, text_tokens=text_tokens)
    peft_model = apply_lora(model, resolve_targets(model, lora, family))
    result["trainable"] = exact_trainable(family, config, preset, peft_model)
    result["vision_encode_seconds"] = round(precompute_image_features(peft_model, [example]).seconds, 2)
    batch = to_device(CachedFeatureCollator(DataCollator(processor, dtype=dtype))([example]), device)
    result["load_average_before_training"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result.update(train_updates(peft_model, batch, args.updates, device))
    result["peak_rss_training_gb"] = round(peak_rss_mib() / 1024, 2)  # before the merge (a full-precision model)
    with tempfile.TemporaryDirectory(prefix="real-dims-", dir=args.work_dir) as work:
        reloaded, result["reload"] = reload_check(peft_model, batch, Path(work) / "adapter")
        result["export"] = merge_and_export(reloaded, family, lora.quantization, Path(work), args.tiny)
    gpu = peak_gpu_mib()
    result.update(peak_rss_gb=round(peak_rss_mib() / 1024, 2), peak_gpu_gb=round(gpu / 1024, 2) if gpu is not None else None,
                  seconds=round(time.perf_counter() - started, 1), machine=machine())
    return result


def mem_available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def run_all(args) -> list[dict[str, Any]]:
    """Every case in its own (niced) process, each started only when enough memory is free."""
    results = []
    for case in args.cases.split(","):
        while not args.tiny and mem_available_gb() < args.min_free_gb:
            print(f"waiting: {mem_available_gb():.1f} GB available, {args.min_free_gb} GB needed", flush=True)
            time.sleep(60)
        command = [sys.executable, __file__, "--case", case, "--updates", str(args.updates)]
        if args.tiny:
            command.append("--tiny")
        for flag, value in (("--device", args.device), ("--dtype", args.dtype), ("--work-dir", args.work_dir)):
            if value:
                command += [flag, value]
        if not args.tiny and hasattr(os, "nice"):
            command = ["nice", "-n", "10", *command]
        completed = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        if completed.returncode != 0 or not lines:
            # One failed case (e.g. killed for memory on a shared machine: exit -9) does not stop the others.
            print(completed.stdout[-2000:], completed.stderr[-4000:], file=sys.stderr)
            results.append({"case": case, "error": f"exit {completed.returncode}", "stderr": completed.stderr[-2000:]})
            print(f"| {case} | failed: exit {completed.returncode} |", flush=True)
        else:
            results.append(json.loads(lines[-1][len(RESULT_PREFIX):]))
            print(row(results[-1]), flush=True)
        if args.json:  # after every case: a later failure keeps the earlier results
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "results": results},
                                                  indent=2, default=str), encoding="utf-8")
    return results


HEADER = ("| case | params | vision tokens/page | trainable (= meta count) | s/update (wall) | CPU-s/update | "
          "peak RSS GB | build s | adapter reload max Δlogits | merge + export s (layout, tensors, GB) | "
          "4-bit share of base |\n|---|---|---|---|---|---|---|---|---|---|---|")


def row(r: dict[str, Any]) -> str:
    trainable = r["trainable"]
    share = f"{r['quantized']['quantized_fraction']:.1%}" if r.get("quantized") else "—"
    export = r["export"]
    return (f"| {r['case']} | {r['params']:,} | {r['vision_tokens_per_page']} | {trainable['total']:,} "
            f"({'yes' if trainable['equal_to_meta'] else 'NO'}) | {' / '.join(f'{s:.1f}' for s in r['seconds_per_update'])} "
            f"| {' / '.join(f'{s:.1f}' for s in r.get('cpu_seconds_per_update', []))} | {r['peak_rss_gb']:.1f} | {r['build_seconds']:.0f} | {r['reload']['max_abs_logits_diff']:.1e} "
            f"| {export['merge_seconds'] + export['export_seconds']:.0f} ({export['layout']}, {export['export_tensors']:,}, "
            f"{export['export_gb']}) | {share} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--case", choices=CASES, help="one case, in this process")
    target.add_argument("--all", action="store_true", help="every case of --cases, one process each")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--tiny", action="store_true", help="shrunken configs: the smoke run (seconds)")
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--min-free-gb", type=float, default=18.0, help="--all: start a case only with this much RAM free")
    parser.add_argument("--work-dir", default=None, help="where the adapter and the export are written (then removed)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.case:
        result = run_case(args.case, args)
        print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)
        return 0
    print(HEADER, flush=True)
    results = run_all(args)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
