"""Bad inputs to the ``deepsynth`` console script, each in a fresh process and folder: exit code, errors, leftovers.

Every case runs ``deepsynth ARGS…`` exactly as a user types it (relative paths, the console script of
this environment) in a fresh temporary folder holding the same hand-made files (an empty CSV, a PDF
that is not one, a folder that is not an adapter, …), offline (``HF_HUB_OFFLINE=1``), with the embedded
default model or none. Recorded per case: the exit code, whether a Python traceback was printed, the
error lines (``error: …`` as DeepSynth prints them; argparse's ``deepsynth CMD: error: …`` counted
apart), whether the error names the field or file, what was left in the folder (any file or folder
created, changed or removed) and the seconds. A case is **ok** with exit 2, no traceback, exactly one
error line naming the field or file, and nothing left.

    python benchmarks/cli_bad_inputs.py                    # the whole sweep (minutes: each case imports torch)
    python benchmarks/cli_bad_inputs.py --cases 5          # the first 5
    python benchmarks/cli_bad_inputs.py --only train_epochs_zero,serve_port_out_of_range
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_JSON = BENCH_DIR / "results" / "cli_bad_inputs.json"
TIMEOUT_S = 300
TRACEBACK = "Traceback (most recent call last)"
ARGPARSE_ERROR = re.compile(r"^deepsynth(?: [\w-]+)?: error: ")
EMBEDDED = "deepsynth/tiny-ocr2"


@dataclass(frozen=True)
class Case:
    """One bad command line: ``argv`` after ``deepsynth``; ``names`` a regex the error line must match."""

    name: str
    argv: tuple[str, ...]
    names: str
    adapter: bool = False  # the folder also holds ``adapter/``, a real PEFT adapter on the embedded model


def _c(name: str, command: str, names: str, adapter: bool = False) -> Case:
    return Case(name, tuple(shlex.split(command)), names, adapter)


CASES: tuple[Case, ...] = (
    # --- wrong or missing files ------------------------------------------------------------------
    _c("train_data_missing", "train --data missing.csv", "missing.csv"),
    _c("train_data_empty_folder", "train --data empty", "empty"),
    _c("train_data_folder_without_documents", "train --data no_docs", "no_docs"),
    _c("train_data_dev_zero", "train --data /dev/zero", "/dev/zero"),
    _c("train_data_empty_csv", "train --data empty.csv", "empty.csv"),
    _c("train_data_csv_without_target", "train --data no_target.csv", "no_target.csv"),
    _c("train_data_jsonl_bad_line", "train --data bad_line.jsonl", "bad_line.jsonl.*line 2|line 2.*bad_line"),
    _c("train_data_pdf_not_a_pdf", "train --data fake.pdf", "fake.pdf"),
    _c("train_data_pdf_page_beyond", "train --data beyond.jsonl", "doc.pdf"),
    _c("train_data_image_not_an_image", "train --data bad_image.jsonl", "bad.png"),
    _c("train_eval_data_missing", "train --data good.jsonl --eval-data missing.jsonl", "missing.jsonl"),
    _c("train_config_missing", "train --config missing.yaml", "missing.yaml"),
    _c("train_config_directory", "train --config existing", "existing"),
    _c("train_config_invalid_yaml", "train --config invalid.yaml", "invalid.yaml"),
    _c("train_config_unknown_key", "train --config unknown_key.yaml", "bogus_key"),
    _c("train_resume_missing_checkpoint", "train --resume missing_checkpoint", "missing_checkpoint"),
    # --- bad values ----------------------------------------------------------------------------
    _c("train_epochs_negative", "train --epochs -1", "epochs"),
    _c("train_epochs_zero", "train --epochs 0", "epochs"),
    _c("train_epochs_text", "train --epochs many", "--epochs"),
    _c("train_learning_rate_negative", "train --learning-rate -1e-4", "learning.rate"),
    _c("train_learning_rate_zero", "train --learning-rate 0", "learning.rate"),
    _c("train_learning_rate_text", "train --learning-rate fast", "--learning-rate"),
    _c("train_lora_rank_zero", "train --lora-rank 0", "lora.rank"),
    _c("train_lora_rank_negative", "train --lora-rank -4", "lora.rank"),
    _c("train_batch_size_zero", "train --batch-size 0", "batch.size"),
    _c("train_batch_size_fraction", "train --batch-size 1.5", "--batch-size"),
    _c("train_preset_unknown", "train --preset nope", "preset"),
    _c("train_scheduler_unknown", "train --scheduler sometimes", "scheduler"),
    _c("train_task_unknown", "train --task translate", "task"),
    _c("train_image_mode_unknown", "train --image-mode huge", "image.mode"),
    _c("train_dtype_unknown", "train --dtype float8", "dtype"),
    _c("train_lora_quantization_unknown", "train --lora-quantization 3bit", "quantization"),
    _c("train_warmup_ratio_one", "train --warmup-ratio 1", "warmup.ratio"),
    _c("train_column_mapping_malformed", "train --data mapped.csv --column-mapping summary", "column.mapping"),
    _c("train_column_mapping_missing_column", "train --data mapped.csv --column-mapping summary=nope", "nope"),
    _c("train_hub_model_id_malformed", "train --push-to-hub --hub-model-id 'not a repo'", "hub.model.id"),
    # --- generate ------------------------------------------------------------------------------
    _c("generate_adapter_and_model", f"generate --adapter adapter --model {EMBEDDED} --text hi", "--model"),
    _c("generate_neither_adapter_nor_model", "generate --text hi", "--adapter"),
    _c("generate_neither_image_nor_text", f"generate --model {EMBEDDED}", "--image"),
    _c("generate_adapter_not_an_adapter", "generate --adapter not_adapter --text hi", "not_adapter"),
    _c("generate_model_missing_folder", "generate --model ./missing_model --text hi", "missing_model"),
    _c("generate_image_missing", "generate --adapter adapter --image missing.png", "missing.png", True),
    _c("generate_image_not_an_image", "generate --adapter adapter --image bad.png", "bad.png", True),
    _c("generate_image_directory", "generate --adapter adapter --image existing", "existing", True),
    _c("generate_pdf_not_a_pdf", "generate --adapter adapter --image fake.pdf", "fake.pdf", True),
    _c("generate_pdf_page_beyond", "generate --adapter adapter --image 'doc.pdf#page=9'", "doc.pdf", True),
    _c("generate_max_new_tokens_zero", "generate --adapter adapter --text hi --max-new-tokens 0",
       "max.new.tokens", True),
    # --- eval, export, label, push -------------------------------------------------------------
    _c("eval_adapter_not_an_adapter", "eval --adapter not_adapter", "not_adapter"),
    _c("eval_adapter_missing", "eval --adapter missing_adapter", "missing_adapter"),
    _c("eval_data_missing", "eval --adapter adapter --data missing.csv", "missing.csv", True),
    _c("eval_max_eval_samples_zero", "eval --adapter adapter --data good.jsonl --max-eval-samples 0",
       "max.eval.samples", True),
    _c("export_adapter_not_an_adapter", "export --adapter not_adapter --out exported", "not_adapter"),
    _c("export_merge_into_non_empty_folder", "export --adapter adapter --merge existing", "existing", True),
    _c("export_merge_onto_a_file", "export --adapter adapter --merge page.png", "page.png", True),
    _c("export_out_into_non_empty_folder", "export --adapter adapter --out existing", "existing", True),
    _c("export_dtype_unknown", "export --adapter adapter --merge merged --dtype int8", "--dtype", True),
    _c("export_max_shard_size_text", "export --adapter adapter --merge merged --max-shard-size huge",
       "shard", True),
    _c("label_adapter_not_an_adapter", "label --adapter not_adapter --data page.png --out drafts.jsonl",
       "not_adapter"),
    _c("label_data_missing", "label --data missing_pages --out drafts.jsonl", "missing_pages"),
    _c("label_data_without_pages", "label --data no_docs --out drafts.jsonl", "no_docs"),
    _c("label_data_not_an_image", "label --data bad.png --out drafts.jsonl", "bad.png"),
    _c("label_batch_size_zero", "label --data page.png --out drafts.jsonl --batch-size 0", "batch.size"),
    _c("label_out_is_a_folder", "label --data page.png --out existing", "existing"),
    _c("push_adapter_not_an_adapter", "push --adapter not_adapter --repo-id org/name", "not_adapter"),
    _c("push_repo_id_malformed", "push --adapter adapter --repo-id 'not a/repo id'", "repo.id", True),
    _c("push_backend_unknown", "push --adapter adapter --repo-id org/name --backend svn", "--backend", True),
    # --- serve, recommend, inspect, the command itself -----------------------------------------
    _c("serve_port_out_of_range", "serve --port 70000", "port"),
    _c("serve_port_negative", "serve --port -1", "port"),
    _c("serve_max_upload_zero", "serve --port 0 --max-upload-mb 0", "max.upload.mb"),
    _c("serve_token_file_missing", "serve --port 0 --token-file missing_token", "missing_token"),
    _c("serve_max_concurrent_jobs_zero", "serve --port 0 --max-concurrent-jobs 0", "concurrent.jobs"),
    _c("recommend_num_samples_zero", "recommend --num-samples 0", "num.samples"),
    _c("recommend_num_samples_negative", "recommend --num-samples -3", "num.samples"),
    _c("recommend_num_samples_text", "recommend --num-samples abc", "--num-samples"),
    _c("recommend_world_size_zero", "recommend --num-samples 10 --world-size 0", "world.size"),
    _c("recommend_image_mode_unknown", "recommend --num-samples 10 --image-mode huge", "image.mode"),
    _c("inspect_model_missing_folder", "inspect --model ./missing_model --preset tiny_data", "missing_model"),
    _c("inspect_preset_unknown", "inspect --preset nope", "preset"),
    _c("no_command", "", "command"),
    _c("unknown_command", "fit --data x.csv", "fit"),
)


def write_files(folder: Path) -> None:
    """The hand-made inputs every case's folder holds (one PDF page, one PNG; the rest is broken)."""
    from PIL import Image

    texts = {
        "empty.csv": "", "no_target.csv": "title,body\nA,some text\n", "mapped.csv": "document,target\nsome text,short\n",
        "bad_line.jsonl": '{"text": "a", "summary": "b"}\n{"text": "c", "summary"\n',
        "good.jsonl": '{"text": "some text", "summary": "short"}\n{"text": "more text", "summary": "less"}\n',
        "beyond.jsonl": '{"image": "doc.pdf#page=9", "summary": "x"}\n',
        "bad_image.jsonl": '{"image": "bad.png", "summary": "x"}\n',
        "fake.pdf": "this is not a PDF\n", "bad.png": "this is not an image\n",
        "invalid.yaml": "epochs: [1, 2\n", "unknown_key.yaml": "epochs: 1\nbogus_key: 3\n",
        "no_docs/notes.txt": "no documents here\n", "not_adapter/notes.txt": "not an adapter\n",
        "existing/keep.txt": "keep me\n",
    }
    for name, text in texts.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "empty").mkdir()
    page = Image.new("RGB", (64, 64), "white")
    page.save(folder / "page.png")
    page.save(folder / "doc.pdf")  # one page


def build_adapter(folder: Path) -> Path:
    """A PEFT adapter on the embedded model (as tests/evaluation/test_adapter_folder.py builds one)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from deepsynth.models.loading import load_model_and_processor

    torch.manual_seed(0)
    model = load_model_and_processor(None).model
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)", init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(folder)
    return folder


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` → (size, mtime in ns): what a case created, changed or removed shows."""
    state = {}
    for path in sorted(folder.rglob("*")):
        stat = path.lstat()
        state[str(path.relative_to(folder)) + ("/" if path.is_dir() else "")] = (stat.st_size, stat.st_mtime_ns)
    return state


def left_behind(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """The paths a case created (+), changed (~) or removed (-); a folder's own mtime is not a change."""
    created = [f"+{path}" for path in after if path not in before]
    removed = [f"-{path}" for path in before if path not in after]
    changed = [f"~{path}" for path in after if path in before and not path.endswith("/")
               and after[path] != before[path]]
    return created + changed + removed


def environment(folder: Path) -> dict[str, str]:
    """Offline, one thread, no Hub token or push settings, the server's state folder inside the case's folder."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "DS_PUSH_BACKEND", "DEEPSYNTH_ACCESS_TOKEN")}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               DEEPSYNTH_STATE_DIR=str(folder / "state"), PYTHONUNBUFFERED="1")
    return env


def console_script() -> str:
    """The ``deepsynth`` console script next to this interpreter (the user's installed command)."""
    script = Path(sys.executable).parent / "deepsynth"
    found = str(script) if script.exists() else shutil.which("deepsynth")
    if not found:
        raise SystemExit("no `deepsynth` console script: install the package (pip install -e .)")
    return found


def execute(argv: list[str], folder: Path, timeout: float) -> tuple[int | None, str, str, float]:
    """Run one command line in ``folder``: (exit code or None on a timeout, stdout, stderr, seconds)."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=folder, env=environment(folder), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
        code: int | None = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the session it leads: the command and its children
        out, err = process.communicate()
        code = None
    return code, out, err, time.perf_counter() - start


def judge(case: Case, code: int | None, out: str, err: str, left: list[str]) -> dict[str, Any]:
    """The recorded figures of one run and whether it is ok (exit 2, one error line naming the field, nothing left)."""
    lines = (out + "\n" + err).splitlines()
    own = [line for line in lines if line.startswith("error:")]
    usage = [line for line in lines if ARGPARSE_ERROR.match(line)]
    traceback = TRACEBACK in out or TRACEBACK in err
    named = any(re.search(case.names, line) for line in own + usage)
    ok = code == 2 and not traceback and len(own) + len(usage) == 1 and named and not left
    return {"exit_code": code, "timed_out": code is None, "traceback": traceback, "error_lines": len(own),
            "argparse_error_lines": len(usage), "names_field": named, "left": left, "ok": ok,
            "error": (own + usage)[0] if own + usage else None, "stderr_tail": err[-1500:]}


def run_case(case: Case, script: str, adapter: Path | None, timeout: float) -> dict[str, Any]:
    """One case in a fresh temporary folder, exactly as typed: ``deepsynth ARGS…``."""
    with tempfile.TemporaryDirectory(prefix=f"cli-{case.name}-") as tmp:
        folder = Path(tmp)
        write_files(folder)
        if case.adapter:
            shutil.copytree(adapter, folder / "adapter")
        before = snapshot(folder)
        code, out, err, seconds = execute([script, *case.argv], folder, timeout)
        left = left_behind(before, snapshot(folder))
    result = {"name": case.name, "subcommand": case.argv[0] if case.argv else "", "argv": ["deepsynth", *case.argv],
              "names": case.names, "seconds": round(seconds, 2)}
    result.update(judge(case, code, out, err, left))
    return result


def select(cases: tuple[Case, ...], count: int | None, only: list[str] | None) -> list[Case]:
    """The first ``count`` cases, or those named in ``only`` (an unknown name is an error)."""
    if only:
        known = {case.name: case for case in cases}
        unknown = [name for name in only if name not in known]
        if unknown:
            raise SystemExit(f"unknown case(s): {', '.join(unknown)}")
        return [known[name] for name in only]
    return list(cases[:count] if count else cases)


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals of a sweep: cases, ok, exit codes, tracebacks, leftovers, per subcommand."""
    codes: dict[str, int] = {}
    for result in results:
        key = "timeout" if result["timed_out"] else str(result["exit_code"])
        codes[key] = codes.get(key, 0) + 1
    subcommands: dict[str, int] = {}
    for result in results:
        subcommands[result["subcommand"] or "(none)"] = subcommands.get(result["subcommand"] or "(none)", 0) + 1
    return {"cases": len(results), "ok": sum(r["ok"] for r in results), "exit_codes": codes,
            "tracebacks": sum(r["traceback"] for r in results), "left_something": sum(bool(r["left"]) for r in results),
            "not_one_error_line": sum(r["error_lines"] + r["argparse_error_lines"] != 1 for r in results),
            "field_not_named": sum(not r["names_field"] for r in results),
            "argparse_errors": sum(r["argparse_error_lines"] > 0 for r in results), "subcommands": subcommands,
            "seconds": round(sum(r["seconds"] for r in results), 1)}


def markdown(results: list[dict[str, Any]], totals: dict[str, Any]) -> str:
    """The sweep as a markdown table, then its totals."""
    lines = ["| case | exit | traceback | error lines | names it | left | s | ok |", "|---|---:|---|---:|---|---|---:|---|"]
    for r in results:
        count = f"{r['error_lines']}" + (f" (+{r['argparse_error_lines']} argparse)" if r["argparse_error_lines"] else "")
        lines.append(f"| `{r['name']}` | {'timeout' if r['timed_out'] else r['exit_code']} | "
                     f"{'yes' if r['traceback'] else 'no'} | {count} | {'yes' if r['names_field'] else 'no'} | "
                     f"{', '.join(r['left']) or '-'} | {r['seconds']:.1f} | {'ok' if r['ok'] else '**FAIL**'} |")
    lines.append("")
    lines.append(f"{totals['ok']} of {totals['cases']} ok; exit codes {totals['exit_codes']}; "
                 f"{totals['tracebacks']} tracebacks; {totals['left_something']} left something; "
                 f"{totals['not_one_error_line']} without exactly one error line; {totals['field_not_named']} not naming "
                 f"the field; subcommands {totals['subcommands']}; {totals['seconds']} s")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=None, metavar="K", help="run the first K cases")
    parser.add_argument("--only", default=None, metavar="NAME[,NAME]", help="run these cases (comma-separated)")
    parser.add_argument("--json", default=str(DEFAULT_JSON), metavar="PATH", help=f"results file (default {DEFAULT_JSON})")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help=f"seconds per case (default {TIMEOUT_S})")
    parser.add_argument("--list", action="store_true", help="print the case names and stop")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the selected cases one after another; 0 when every one is ok."""
    args = parse_args(argv)
    cases = select(CASES, args.cases, args.only.split(",") if args.only else None)
    if args.list:
        print("\n".join(case.name for case in cases))
        return 0
    script, results = console_script(), []
    with tempfile.TemporaryDirectory(prefix="cli-bad-inputs-") as tmp:
        adapter = build_adapter(Path(tmp) / "adapter") if any(case.adapter for case in cases) else None
        for case in cases:
            results.append(run_case(case, script, adapter, args.timeout))
            print(f"{case.name}: exit {results[-1]['exit_code']}, {'ok' if results[-1]['ok'] else 'FAIL'}, "
                  f"{results[-1]['seconds']:.1f} s", flush=True)
    totals = summary(results)
    data = {"benchmark": "cli_bad_inputs", "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "python": sys.version.split()[0]},
            "summary": totals, "cases": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print("\n" + markdown(results, totals))
    return 0 if totals["ok"] == totals["cases"] else 1


if __name__ == "__main__":
    sys.exit(main())
