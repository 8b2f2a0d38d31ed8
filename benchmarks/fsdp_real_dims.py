"""Memory per rank of FSDP2 at real dimensions: DeepSeek-OCR v1 (fp32) on 2 CPU processes vs 1 process.

Not part of CI (minutes, ~16 GB of RAM); ``--tiny`` runs the same code on the shrunken config of
``real_dims.py`` in seconds and is the suite's smoke run. The driver runs, one after the other:

1. ``single``: one process, the whole model (random weights from the real config, as in
   ``real_dims.py``), DeepSynth's LoRA preset, N AdamW updates on one page at the real resolution;
2. ``fsdp2``: ``accelerate launch`` with ``examples/accelerate/fsdp.yaml``'s settings, 2 processes:
   every rank builds the model on the meta device (parameters only; buffers are real), accelerate's
   ``fsdp2_prepare_model`` wraps it exactly as DeepSynth's trainer does (one unit per decoder and
   per vision layer, from the model's ``_no_split_modules``), then each rank materialises and fills
   only its own shards — the memory profile of each rank reading its slices of the checkpoint. No
   rank ever holds the whole model. Each rank trains on its own page (global batch 2).

Both runs compute the same thing per rank (no vision feature cache: with sharded weights
DeepSynth's trainer turns it off). Peak RSS is each process's ``ru_maxrss`` (loading included).

    flock /tmp/deepsynth-bigmem.lock nice -n 10 python benchmarks/fsdp_real_dims.py \\
        --json benchmarks/results/fsdp_real_dims_cpu.json
    python benchmarks/fsdp_real_dims.py --tiny                  # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULT_PREFIX = "FSDP_REAL_DIMS_RESULT "
PHASE_PREFIX = "FSDP_REAL_DIMS_PHASE "  # peak RSS after each phase, printed as it goes (kept if a rank is killed)


def _model_class(family: str):
    from transformers import DeepseekOcr2ForConditionalGeneration, UnlimitedOcrForConditionalGeneration

    return UnlimitedOcrForConditionalGeneration if family == "deepseek_ocr" else DeepseekOcr2ForConditionalGeneration


def _config(family: str, tiny_run: bool):
    from real_dims import FAMILIES, tiny_config

    from deepsynth.models import tiny
    from deepsynth.models.resolver import resolve_config

    config = tiny_config(family) if tiny_run else resolve_config(FAMILIES[family]).config
    tokenizer = tiny.shipped_tokenizer()
    config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    return config, tokenizer


def _fill_random(tensor, generator) -> None:
    import torch

    with torch.no_grad():
        tensor.normal_(0.0, 0.02, generator=generator) if tensor.is_floating_point() else tensor.zero_()


def sharded_model(family: str, config, lora, accelerator):
    """The LoRA model, sharded by accelerate's FSDP2 wrapping while on the meta device, then each
    rank's shards materialised and filled (random, seeded per rank): no rank holds the whole model."""
    import torch
    from accelerate import init_empty_weights
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    from deepsynth.models.device import choose_experts_implementation
    from deepsynth.models.loading import freeze_vision_modules
    from deepsynth.training.targets import apply_lora, resolve_targets

    with init_empty_weights(include_buffers=False):  # parameters on meta, buffers (rotary tables…) real
        model = _model_class(family)(config)
    model.set_experts_implementation(choose_experts_implementation(torch.device("cpu")))
    freeze_vision_modules(model, family)
    with init_empty_weights(include_buffers=False):
        model = apply_lora(model, resolve_targets(model, lora, family))
    buffers = {name: buffer for name, buffer in model.named_buffers()}
    # This rank fills its own shards below: accelerate's rank-0 loading (cpu_ram_efficient_loading) has
    # nothing to broadcast here, and on CPU it holds the whole model plus rank 0's shard (see the docs).
    accelerator.state.fsdp_plugin.cpu_ram_efficient_loading = False
    model = fsdp2_prepare_model(accelerator, model)
    model.to_empty(device="cpu")  # allocates this rank's shards only (DTensor local tensors)
    for name, buffer in buffers.items():  # to_empty left the buffers uninitialised: put them back
        module_name, _, leaf = name.rpartition(".")
        model.get_submodule(module_name)._buffers[leaf] = buffer
    generator = torch.Generator().manual_seed(accelerator.process_index)
    for parameter in model.parameters():
        _fill_random(parameter.to_local() if hasattr(parameter, "to_local") else parameter, generator)
    return model


def whole_model(family: str, config, lora):
    import torch
    from real_dims import build_model

    from deepsynth.training.targets import apply_lora, resolve_targets

    model = build_model(family, config, torch.float32, torch.device("cpu"))
    return apply_lora(model, resolve_targets(model, lora, family))


def worker(args) -> dict[str, Any]:
    """One rank (or the single process): build, N updates, measurements."""
    import torch
    from common import peak_rss_mib
    from real_dims import build_processor, page_example

    from deepsynth.data.collate import DataCollator
    from deepsynth.training.distributed import enable_fsdp_on_cpu, local_weight_share
    from deepsynth.training.lora_config import get_lora_preset

    enable_fsdp_on_cpu()
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    family, lora = args.family, get_lora_preset(args.preset)
    config, tokenizer = _config(family, args.tiny)
    started = time.perf_counter()
    sharded = accelerator.num_processes > 1
    model = sharded_model(family, config, lora, accelerator) if sharded else whole_model(family, config, lora)
    result: dict[str, Any] = {"rank": accelerator.process_index, "world_size": accelerator.num_processes,
                              "build_seconds": round(time.perf_counter() - started, 1),
                              "rss_after_build_gb": round(peak_rss_mib() / 1024, 2)}
    _phase(accelerator.process_index, "built", peak_rss_mib())
    local, total = local_weight_share(model)
    result.update(weight_elements=total, weight_elements_held=local)
    processor = build_processor(family, tokenizer, args.tiny)
    example, vision, text = page_example(processor, family, args.tiny)
    batch = DataCollator(processor, dtype=torch.float32)([example])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    seconds, losses = [], []
    for _ in range(args.updates):
        began = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(round(time.perf_counter() - began, 2))
        losses.append(round(float(loss), 4))
        _phase(accelerator.process_index, f"update {len(seconds)}", peak_rss_mib(), seconds[-1])
    result.update(vision_tokens=vision, text_tokens=text, seconds_per_update=seconds, losses=losses,
                  peak_rss_gb=round(peak_rss_mib() / 1024, 2), threads=torch.get_num_threads())
    return result


def _phase(rank: int, phase: str, peak_mib: float, seconds: float | None = None) -> None:
    record = {"rank": rank, "phase": phase, "peak_rss_gb": round(peak_mib / 1024, 2), "seconds": seconds}
    print("\n" + PHASE_PREFIX + json.dumps(record), flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _results(output: str) -> list[dict[str, Any]]:
    return [json.loads(line[len(RESULT_PREFIX):]) for line in output.splitlines() if line.startswith(RESULT_PREFIX)]


def run(label: str, command: list[str], env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    process = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    ranks = sorted(_results(process.stdout), key=lambda r: r["rank"])
    phases = [json.loads(line[len(PHASE_PREFIX):]) for line in process.stdout.splitlines()
              if line.startswith(PHASE_PREFIX)]
    entry: dict[str, Any] = {"run": label, "returncode": process.returncode, "ranks": ranks, "phases": phases,
                             "seconds": round(time.perf_counter() - started, 1)}
    if process.returncode != 0 or not ranks:
        entry["error"] = (process.stdout + process.stderr)[-3000:]
    return entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="deepseek_ocr", choices=("deepseek_ocr", "deepseek_ocr2"))
    parser.add_argument("--preset", default="tiny_data")
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="shrunken config: the smoke run (seconds)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=("single", "fsdp2"), default=None, help="run one of the two")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(BENCH_DIR))
    if args.worker:
        print("\n" + RESULT_PREFIX + json.dumps(worker(args)), flush=True)
        return 0
    from common import machine, write_json

    common = ["--family", args.family, "--preset", args.preset, "--updates", str(args.updates), "--worker",
              *(["--tiny"] if args.tiny else [])]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    runs = []
    if args.only in (None, "single"):
        runs.append(run("single", [sys.executable, str(Path(__file__).resolve()), *common], env))
    if args.only in (None, "fsdp2"):
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(REPO / "examples" / "accelerate" / "fsdp.yaml"), "--num_processes", str(args.processes),
                  "--main_process_port", str(_free_port()), str(Path(__file__).resolve()), *common]
        runs.append(run("fsdp2", launch, env))
    report = {"family": args.family, "preset": args.preset, "dtype": "fp32", "tiny": args.tiny, "runs": runs,
              "machine": machine(), "load_average_end": os.getloadavg()}
    by_name = {r["run"]: r for r in runs if r["ranks"]}
    if {"single", "fsdp2"} <= by_name.keys():
        single_peak = by_name["single"]["ranks"][0]["peak_rss_gb"]
        peaks = [r["peak_rss_gb"] for r in by_name["fsdp2"]["ranks"]]
        report["summary"] = {"single_peak_gb": single_peak, "fsdp2_rank_peaks_gb": peaks,
                             "fsdp2_sum_gb": round(sum(peaks), 2),
                             "max_rank_peak_ratio": round(max(peaks) / single_peak, 3),
                             "sum_ratio": round(sum(peaks) / single_peak, 3)}
    print(json.dumps(report.get("summary", report), indent=1, default=str))
    write_json(args.json, report)
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
