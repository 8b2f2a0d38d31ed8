"""`deepsynth train` under `accelerate launch`: 2 CPU processes (DDP over gloo) on the embedded model.

The CLI runs unchanged. What is checked, and how:

* both ranks end with identical trained weights — each rank logs a SHA-256 of its trainable
  tensors at INFO level (``rank R/W: N optimizer updates, trained-weights sha256 …``);
* optimizer updates == ``estimate_updates(..., world_size=2)`` (the global batch), in the log, in
  metrics.json and in the ``start`` event of progress.jsonl;
* only rank 0 writes outputs: a ``sitecustomize`` module put on the launched processes' path (test
  code, nothing in the library) installs a Python audit hook that records every file opened for
  writing, folder created, file renamed or removed under the output folder, per rank. Rank 1 may
  only create ``checkpoint-N`` folders: the Trainer saves each process's RNG state
  (``rng_state_<rank>.pth``, for an exact resume) into the checkpoint by design. (Writes done in
  C/Rust — ``torch.save``, safetensors — are not audited; rng_state_1.pth is one.)
  progress.jsonl must hold one ``start`` and one ``done`` event, metrics.json must parse.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap

import pytest

from deepsynth.training.recommend import estimate_updates

SAMPLES, BATCH, ACCUMULATION, EPOCHS, WORLD = 3, 1, 1, 2, 2

AUDIT_HOOK = textwrap.dedent(
    '''
    import os, sys

    _watch = os.environ.get("DEEPSYNTH_TEST_WATCH")
    _log = os.environ.get("DEEPSYNTH_TEST_WRITES")
    if _watch and _log:
        _rank = os.environ.get("RANK", "launcher")
        _path = f"{_log}.{_rank}"

        def _under(path):
            try:
                return os.path.abspath(os.fsdecode(path)).startswith(_watch)
            except (TypeError, ValueError):
                return False

        def _hook(event, args):
            if event == "open":
                path, mode, flags = args
                writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                    mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
                if writing and _under(path):
                    _record(event, path)
            elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "shutil.move"):
                if args and _under(args[0]):
                    _record(event, args[0])

        def _record(event, path):
            with open(_path, "a", encoding="utf-8") as stream:  # outside the watched folder
                stream.write(f"{event} {os.fsdecode(path)}\\n")

        sys.addaudithook(_hook)
    '''
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_cpu_processes_train_one_adapter_and_only_rank0_writes(tmp_path):
    out = tmp_path / "out"
    config = tmp_path / "run.yaml"
    config.write_text(textwrap.dedent(f"""\
        preset: tiny_data
        output_dir: {out}
        max_train_samples: {SAMPLES}
        max_eval_samples: 1
        batch_size: {BATCH}
        gradient_accumulation_steps: {ACCUMULATION}
        num_epochs: {EPOCHS}
        max_new_tokens: 4
        resume_from_checkpoint: never
        """), encoding="utf-8")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(AUDIT_HOOK, encoding="utf-8")
    writes = tmp_path / "writes"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "DEEPSYNTH_TEST_WATCH": str(out),
        "DEEPSYNTH_TEST_WRITES": str(writes),
        "CUDA_VISIBLE_DEVICES": "",  # CPU processes, gloo, even on a GPU machine
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    # `--multi_gpu` selects accelerate's torchrun launcher; on a machine without CUDA the trainer
    # runs each process on the CPU (gloo). (`--cpu --num_processes 2` starts ONE process in
    # accelerate 1.x: multi-CPU there means mpirun.)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(WORLD),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "deepsynth.cli", "train", "--config", str(config),
    ]
    run = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=280)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-6000:]

    expected = estimate_updates(SAMPLES, BATCH, ACCUMULATION, EPOCHS, world_size=WORLD).effective_updates
    assert expected == 4  # ceil(3 / 2) = 2 samples per process per epoch, 2 epochs

    # Identical trained weights on both ranks, after the expected number of updates.
    digests = dict(re.findall(r"rank (\d+)/2: \d+ optimizer updates, trained-weights sha256 ([0-9a-f]{64})", log))
    updates = {int(n) for n in re.findall(r"rank \d+/2: (\d+) optimizer updates", log)}
    assert set(digests) == {"0", "1"}, log[-6000:]
    assert digests["0"] == digests["1"]
    assert updates == {expected}

    # Outputs: one run's worth, written by rank 0 only.
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["optimizer_updates"] == metrics["estimated_updates"] == expected
    events = [json.loads(line) for line in (out / "progress.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["event"] for e in events].count("start") == 1 and events[-1]["event"] == "done"
    assert events[0]["total_updates"] == expected
    assert (out / "adapter_model.safetensors").is_file()
    leftovers = [p for p in out.rglob("*") if p.name.startswith(("tmp", ".tmp")) or p.suffix == ".tmp"]
    assert not leftovers
    for checkpoint in out.glob("checkpoint-*"):
        assert {p.name for p in checkpoint.glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}

    rank0 = writes.with_name("writes.0")
    rank1 = writes.with_name("writes.1")
    assert rank0.is_file() and "metrics.json" in rank0.read_text()  # the hook saw rank 0's writes
    # Rank 1 only creates checkpoint folders (exist_ok) for its own rng_state_1.pth, as the Trainer does.
    rank1_writes = rank1.read_text().splitlines() if rank1.exists() else []
    unexpected = [w for w in rank1_writes if not re.fullmatch(rf"os\.mkdir {re.escape(str(out))}/checkpoint-\d+", w)]
    assert not unexpected, "\n".join(unexpected)
    if writes.with_name("writes.launcher").exists():
        assert not writes.with_name("writes.launcher").read_text()
