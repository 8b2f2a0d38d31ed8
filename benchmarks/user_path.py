"""The path a user takes, at real size: a checkpoint folder on disk, then DeepSynth's own commands.

Two steps (issue 20; docs/performance.md, "From the user's checkpoint folder"):

``replica`` writes a full-size replica of a Hub checkpoint to a folder — the files a user gets from
``deepseek-ai/DeepSeek-OCR`` (its ``config.json`` with ``model_type: deepseek_vl_v2``, bf16 safetensors
shards under the original tensor names, ``model.safetensors.index.json``, processor and tokenizer files)
or from ``deepseek-community/DeepSeek-OCR-2`` (transformers' native layout) — with seeded random weights.
The tensor names and shapes come from the architecture on the meta device through transformers' own
reverse weight conversion (what ``save_pretrained`` writes); for v1 they equal the reference checkpoint's
(tests/benchmarks/test_user_path.py). It is written one shard at a time: the model is never held.
The tokenizer is DeepSynth's small shipped one (the real tokenizers cannot be downloaded here): every
id fits the real vocabulary, the texts tokenize into somewhat different lengths.

``run`` runs the user's commands from that folder, each in a fresh process (``deepsynth inspect``,
``train`` on a folder of A4 PDFs, ``eval``, ``export --merge``, ``generate`` from the merged model and
from the adapter), and records wall time, CPU time and peak RSS of each; the plain Trainer + PEFT
script's peak at the same shape comes from ``trainer_vs_baseline.py`` in the same run.

    python benchmarks/user_path.py replica --family deepseek-ocr --out /data/replicas/deepseek-ocr
    python benchmarks/user_path.py run --family deepseek-ocr --replica /data/replicas/deepseek-ocr \\
        --json benchmarks/results/user_path_cpu.json
    python benchmarks/user_path.py --tiny          # both steps on shrunken configs (the suite's smoke run)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
FAMILIES = ("deepseek-ocr", "deepseek-ocr-2")
SHARD_SIZE = "1GB"
REFERENCE_PROCESSOR = BENCH_DIR.parent / "tests" / "data" / "reference" / "deepseek-ocr" / "processor_config.json"
_LAYER_GROUP = re.compile(r"^(.*?\blayers\.\d+\.)")


# --- the replica ----------------------------------------------------------------------------------------

def family_config(family: str, tiny: bool):
    """The native transformers config of ``family``: the shipped real one, or a shrunken one (``tiny``)."""
    from deepsynth.models.resolver import resolve_config

    if tiny:
        sys.path.insert(0, str(BENCH_DIR))
        from real_dims import tiny_config

        return tiny_config("deepseek_ocr" if family == "deepseek-ocr" else "deepseek_ocr2")
    hub = {"deepseek-ocr": "deepseek-ai/DeepSeek-OCR", "deepseek-ocr-2": "deepseek-community/DeepSeek-OCR-2"}
    return resolve_config(hub[family]).config


def checkpoint_tensors(model) -> Any:
    """(name, meta tensor) groups under the checkpoint's names, one decoder/vision layer at a time.

    transformers' reverse weight conversion (what ``save_pretrained`` applies: v1's per-expert tensors,
    ``sam_model`` names …) is run per layer group on the meta device: shapes only, no memory.
    """
    from transformers.core_model_loading import revert_weight_conversion

    native = model.state_dict()
    groups: dict[str, list[str]] = {}
    for name in native:
        match = _LAYER_GROUP.match(name)
        groups.setdefault(match.group(1) if match else "", []).append(name)
    for names in groups.values():
        yield dict(revert_weight_conversion(model, {name: native[name] for name in names}))


def random_value(name: str, shape, std: float = 0.02):
    """A seeded random tensor for checkpoint tensor ``name``: norms 1, biases 0, the rest N(0, std).

    Seeded by the name, so a replica is the same whatever the order or shard size it is written in.
    """
    import torch

    if len(shape) == 1 and name.endswith(".weight"):
        return torch.ones(shape)
    if name.endswith(".bias"):
        return torch.zeros(shape)
    generator = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))
    return torch.randn(shape, generator=generator).mul_(std)


def _random_groups(model, extra: dict[str, tuple[int, ...]]):
    import torch

    first = True
    for group in checkpoint_tensors(model):
        part = {name: random_value(name, tuple(meta.shape)).to(torch.bfloat16) for name, meta in group.items()}
        if first:
            part.update({name: random_value(name, shape).to(torch.bfloat16) for name, shape in extra.items()})
            first = False
        yield part


def write_replica(family: str, out: Path, tiny: bool = False) -> dict[str, Any]:
    """Write the replica folder ``out`` (replaced if it exists); returns what was written."""
    import torch
    from transformers import DeepseekOcr2Processor
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import DeepseekOcr2ImageProcessorPil

    from deepsynth.evaluation.deepseek_ocr_layout import DEEPSEEK_OCR_UNUSED_TENSOR, deepseek_vl_v2_config, write_safetensors_shards
    from deepsynth.models import tiny as embedded
    from deepsynth.models.resolver import ARCHITECTURES_DIR, model_class_of

    started = time.perf_counter()
    config = family_config(family, tiny)
    native_family = "deepseek_ocr" if family == "deepseek-ocr" else "deepseek_ocr2"
    with torch.device("meta"):
        model = model_class_of(native_family)(config)
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tokenizer = embedded.shipped_tokenizer()
    extra: dict[str, tuple[int, ...]] = {}
    if family == "deepseek-ocr":
        # DeepSeek-OCR's checkpoint holds one tensor its code never reads (docs/serving.md).
        clip = config.vision_config.encoder_config
        extra[DEEPSEEK_OCR_UNUSED_TENSOR] = (clip.hidden_size, 3, clip.patch_size, clip.patch_size)
        config_json = json.loads((ARCHITECTURES_DIR / "deepseek-ocr.json").read_text()) if not tiny \
            else deepseek_vl_v2_config(config)
        config_json["torch_dtype"] = "bfloat16"
        (staging / "config.json").write_text(json.dumps(config_json, indent=2) + "\n")
        size = 256 if tiny else 1024
        processor = json.loads(REFERENCE_PROCESSOR.read_text(encoding="utf-8"))  # DeepSeek-OCR's own file
        processor["candidate_resolutions"] = [[size, size]]
        (staging / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
        tokenizer.save_pretrained(staging)
    else:
        config.dtype = torch.bfloat16
        config.save_pretrained(staging)
        if tiny:
            embedded.build_processor(tokenizer).save_pretrained(staging)
        else:  # the real processor: 1024 px global view + 768 px tiles
            DeepseekOcr2Processor(image_processor=DeepseekOcr2ImageProcessorPil(), tokenizer=tokenizer).save_pretrained(staging)
    index = write_safetensors_shards(_random_groups(model, extra), staging, max_shard_size=SHARD_SIZE)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    from common import peak_rss_mib

    return {"family": family, "folder": str(out), "tiny": tiny, "tensors": len(index["weight_map"]),
            "bytes": index["metadata"]["total_size"], "shards": len(set(index["weight_map"].values())),
            "seconds": round(time.perf_counter() - started, 1), "peak_rss_mib": round(peak_rss_mib(), 1)}


# --- the user's commands ----------------------------------------------------------------------------------

PRESETS = ("tiny_data", "qlora_4bit")
COMMANDS = ("inspect", "train", "eval", "export", "generate_model", "generate_adapter")
A4_INCHES = (8.27, 11.69)


def write_pdf_folder(folder: Path, pages: int = 3, words: int = 24) -> Path:
    """A folder of one-page A4 PDFs (typeset by matplotlib's PDF backend) + targets.csv: their texts, to
    transcribe; the last page is held out (``split: eval``). The texts are the bundled documents' first words."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    from deepsynth.data import load_sample_dataset

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for number, text in enumerate(load_sample_dataset("train", max_samples=pages)["text"]):
        line = " ".join(text.split()[:words])
        with PdfPages(folder / f"page{number + 1}.pdf") as pdf:
            figure = plt.figure(figsize=A4_INCHES)
            figure.text(0.08, 0.9, "\n".join(line[i:i + 60] for i in range(0, len(line), 60)), fontsize=14,
                        va="top")
            pdf.savefig(figure)
            plt.close(figure)
        rows.append({"file": f"page{number + 1}.pdf", "page": 1, "summary": line,
                     "split": "eval" if number == pages - 1 else "train"})
    with open(folder / "targets.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def measured(command: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``command`` in a fresh process: exit code, wall seconds, CPU seconds and peak RSS (its own, from wait4)."""
    import subprocess

    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    cuda = re.findall(r"CUDA peak so far (\d+) MiB", log.read_text(encoding="utf-8", errors="replace"))
    return {"returncode": process.returncode, "completed": process.returncode == 0,
            "wall_seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "peak_cuda_mib": float(cuda[-1]) if cuda else None,
            "log": str(log)}


def user_commands(replica: Path, data: Path, work: Path, family: str, preset: str, tiny: bool) -> dict[str, list[str]]:
    """The commands a user types, in order (``deepsynth`` from this interpreter's environment)."""
    deepsynth = [str(Path(sys.executable).parent / "deepsynth")]  # the console script of this environment
    out, merged, page = work / f"adapter-{preset}", work / f"merged-{preset}", f"{data / 'page3.pdf'}#page=1"
    dtype = ["--dtype", "bfloat16"] if family == "deepseek-ocr-2" and preset == "tiny_data" and not tiny \
        and os.environ.get("USER_PATH_OCR2_DTYPE", "float32") == "bfloat16" else []
    return {
        "inspect": [*deepsynth, "inspect", "--model", str(replica), "--preset", preset],
        "train": [*deepsynth, "train", "--model", str(replica), "--data", str(data), "--preset", preset,
                  "--task", "transcribe", "--output-dir", str(out), "--epochs", "2", "--batch-size", "1",
                  "--grad-accum", "2", "--max-new-tokens", "8", "--resume", "never", *dtype],
        "eval": [*deepsynth, "eval", "--adapter", str(out), "--data", str(data), "--max-eval-samples", "1"],
        "export": [*deepsynth, "export", "--adapter", str(out), "--merge", str(merged)],
        "generate_model": [*deepsynth, "generate", "--model", str(merged), "--image", page, "--max-new-tokens", "8"],
        "generate_adapter": [*deepsynth, "generate", "--adapter", str(out), "--image", page, "--max-new-tokens", "8"],
    }


def step_peaks(log: Path) -> dict[str, float]:
    """Each step's own peak RSS (MiB) as the run logged it (models/memory.log_memory): which step sets the peak."""
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    return {step: float(peak) for step, peak in
            re.findall(r"memory after (.+?): \d+ MiB resident, peak during it (\d+) MiB", text)}


def train_figures(adapter: Path, log: Path) -> dict[str, Any]:
    """What the run's metrics.json and log say of the training loop: updates, seconds per update, the cache,
    each step's peak (``fit`` is the training loop's)."""
    path = adapter / "metrics.json"
    if not path.is_file():
        return {}
    peaks = step_peaks(log)
    metrics = json.loads(path.read_text(encoding="utf-8"))
    updates, seconds = metrics.get("optimizer_updates") or 0, metrics["train"]["runtime_seconds"]
    cache = metrics.get("feature_cache") or {}
    return {"optimizer_updates": updates, "train_loop_seconds": seconds,
            "seconds_per_update": round(seconds / updates, 2) if updates else None,
            "vision_tokens_per_page": (metrics.get("image_mode") or {}).get("most"),
            "vision_released_mib": round(cache.get("vision_released_bytes", 0) / 2**20, 1),
            "quantized_fraction": (metrics.get("quantization") or {}).get("quantized_fraction"),
            "step_peak_rss_mib": peaks, "train_loop_peak_rss_mib": peaks.get("fit")}


def plain_script_peak(family: str, work: Path, tiny: bool) -> dict[str, Any]:
    """The plain Trainer + PEFT script (trainer_vs_baseline.py, baseline-scoped) at the same shape: 2 A4 pages,
    batch 1, accumulation 2, 1 epoch, fp32, built in memory — its process peak from wait4."""
    model = "deepseek-ocr" if family == "deepseek-ocr" else "deepseek-ocr-2"
    command = [sys.executable, str(BENCH_DIR / "trainer_vs_baseline.py"), "run", "--variant", "baseline-scoped",
               "--model", model, "--preset", "tiny_data", "--samples", "2", "--batch-size", "1", "--grad-accum", "2",
               "--epochs", "1", *(["--tiny-dims"] if tiny else [])]
    return measured(command, work / f"plain-{family}.log")


def run_cases(args) -> dict[str, Any]:
    """Every (family, preset, command) asked for, one fresh process each; merged into ``args.json``."""
    from common import machine, write_json

    work = Path(args.work)
    data = write_pdf_folder(work / "pdfs")
    previous = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).is_file() else {}
    cases = {(c["family"], c["preset"], c["command"]): c for c in previous.get("cases", [])}
    plain = previous.get("plain_script", {})
    for family in args.families:
        replica = Path(args.replica.format(family=family))
        if args.plain and (family not in plain or args.tiny):
            plain[family] = plain_script_peak(family, work, args.tiny)
            print(f"plain script {family}: {plain[family]}", flush=True)
        for preset in args.presets:
            commands = user_commands(replica, data, work / family, family, preset, args.tiny)
            (work / family).mkdir(parents=True, exist_ok=True)
            for name in args.commands:
                if name == "export":  # export refuses a non-empty folder: an earlier run's merged model goes
                    shutil.rmtree(work / family / f"merged-{preset}", ignore_errors=True)
                record = {"family": family, "preset": preset, "command": name, "argv": commands[name][1:],
                          **measured(commands[name], work / family / f"{preset}-{name}.log")}
                if name == "train":
                    record.update(train_figures(work / family / f"adapter-{preset}", Path(record["log"])))
                    loop = record.get("train_loop_peak_rss_mib")
                    record["process_peak_over_loop_peak"] = round(record["peak_rss_mib"] / loop, 3) if loop else None
                reference = (plain.get(family) or {}).get("peak_rss_mib")
                record["plain_script_peak_rss_mib"] = reference
                record["peak_rss_ratio"] = round(record["peak_rss_mib"] / reference, 3) if reference else None
                cases[(family, preset, name)] = record
                print(json.dumps({k: v for k, v in record.items() if k != "argv"}), flush=True)
                result = {"machine": machine(), "plain_script": plain, "cases": list(cases.values())}
                write_json(args.json, result)
    return {"machine": machine(), "plain_script": plain, "cases": list(cases.values())}


# The smoke run's share of the commands (each is a fresh process that imports torch: 10-20 s here); the
# other commands and families run with --all. tests/models/test_memory.py loads both families' replicas.
SMOKE = {"deepseek-ocr": ("qlora_4bit", ("train", "export", "generate_model"))}


def smoke(work: Path, everything: bool = False) -> int:
    """``--tiny``: both steps on shrunken configs of both families — :data:`SMOKE`'s commands, or all of them."""
    failed = 0
    for family in FAMILIES if everything else SMOKE:
        print(json.dumps(write_replica(family, work / f"replica-{family}", tiny=True)))
    plans = {family: (PRESETS, COMMANDS) for family in FAMILIES} if everything else \
        {family: ((preset,), commands) for family, (preset, commands) in SMOKE.items()}
    for family, (presets, commands) in plans.items():
        args = argparse.Namespace(work=str(work / "run"), json=str(work / "user_path_tiny.json"), families=[family],
                                  presets=presets, commands=commands, replica=str(work / "replica-{family}"),
                                  plain=everything, tiny=True)
        result = run_cases(args)
    for case in result["cases"]:
        if not case["completed"]:
            failed += 1
            print(f"FAILED {case['family']} {case['preset']} {case['command']}: see {case['log']}")
    return 1 if failed else 0


def markdown_table(result: dict[str, Any]) -> str:
    """The docs' table: every case with its peak RSS, ratio to the plain script, wall and CPU seconds."""
    lines = ["| family | preset | command | completed | peak RSS MiB | × plain script | loop's peak MiB | wall s | CPU s "
             "| s / update |", "|---|---|---|---|---|---|---|---|---|---|"]
    order = {name: index for index, name in enumerate(COMMANDS)}
    for case in sorted(result["cases"], key=lambda c: (c["family"], c["preset"], order.get(c["command"], 99))):
        ratio = f"{case['peak_rss_ratio']:.3f}" if case.get("peak_rss_ratio") else "–"
        update = case.get("seconds_per_update") or "–"
        loop = f"{case['train_loop_peak_rss_mib']:,.0f}" if case.get("train_loop_peak_rss_mib") else "–"
        lines.append(f"| {case['family']} | {case['preset']} | {case['command']} | {'yes' if case['completed'] else 'NO'} "
                     f"| {case['peak_rss_mib']:,.0f} | {ratio} | {loop} | {case['wall_seconds']:,.0f} | {case['cpu_seconds']:,.0f} "
                     f"| {update} |")
    for family, plain in result.get("plain_script", {}).items():
        lines.append(f"| {family} | plain Trainer + PEFT script | train (in memory, fp32) | "
                     f"{'yes' if plain['completed'] else 'NO'} | {plain['peak_rss_mib']:,.0f} | 1 | – | "
                     f"{plain['wall_seconds']:,.0f} | {plain['cpu_seconds']:,.0f} | – |")
    return "\n".join(lines)


# --- entry point ----------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="shrunken configs: the smoke run (seconds)")
    parser.add_argument("--all", action="store_true", help="with --tiny: every command, both presets")
    parser.add_argument("--keep", help="with --tiny: work in this folder and keep it")
    sub = parser.add_subparsers(dest="step")
    replica = sub.add_parser("replica", help="write a replica checkpoint folder")
    replica.add_argument("--family", choices=FAMILIES, required=True)
    replica.add_argument("--out", required=True)
    replica.add_argument("--tiny", action="store_true", dest="tiny_step")
    run = sub.add_parser("run", help="the user's commands from replica folders, each in a fresh process")
    run.add_argument("--replica", required=True, help="replica folder; {family} is replaced by the family")
    run.add_argument("--families", type=lambda v: v.split(","), default=list(FAMILIES))
    run.add_argument("--presets", type=lambda v: v.split(","), default=list(PRESETS))
    run.add_argument("--commands", type=lambda v: v.split(","), default=list(COMMANDS))
    run.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "deepsynth-user-path"))
    run.add_argument("--json", default=str(BENCH_DIR / "results" / "user_path_cpu.json"))
    run.add_argument("--no-plain", dest="plain", action="store_false", help="skip the plain script's run")
    run.add_argument("--tiny", action="store_true", dest="tiny_step")
    table = sub.add_parser("table", help="print the docs' markdown table of a results file")
    table.add_argument("--json", default=str(BENCH_DIR / "results" / "user_path_cpu.json"))
    args = parser.parse_args(argv)
    if args.step == "table":
        print(markdown_table(json.loads(Path(args.json).read_text(encoding="utf-8"))))
        return 0
    sys.path.insert(0, str(BENCH_DIR))
    if args.step == "replica":
        print(json.dumps(write_replica(args.family, Path(args.out), args.tiny or args.tiny_step), indent=2))
        return 0
    if args.step == "run":
        args.tiny = args.tiny or args.tiny_step
        run_cases(args)
        return 0
    if args.tiny and args.keep:
        return smoke(Path(args.keep), args.all)
    if args.tiny:
        with tempfile.TemporaryDirectory(prefix="user-path-") as work:
            return smoke(Path(work), args.all)
    parser.error("name a step (replica, run) or pass --tiny")
    return 2


if __name__ == "__main__":
    sys.exit(main())
