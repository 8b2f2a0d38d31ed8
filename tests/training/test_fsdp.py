"""`deepsynth train` under `accelerate launch --config_file examples/accelerate/fsdp.yaml`: FSDP2 on 2 CPU
processes (gloo), the embedded model, against the single-process run with the same global batch.

The shipped fsdp.yaml runs unchanged (only ``--main_process_port`` is added). What is checked:

* rank 0 alone reads the weights (``fsdp_cpu_ram_efficient_loading``), rank 1 starts on meta;
* it is really sharded: each rank logs that it holds about half of the weight elements, and the
  checkpoints are accelerate's FSDP ones (``pytorch_model_fsdp.bin``, ``optimizer.bin``);
* LoRA plus full router training (``lora_modules_to_save: [gate]``, PEFT copies of the routers);
* the loss history equals the single-process run's within 1e-4 and the adapter within 1e-5
  (2 distinct samples, global batch 2: 2 processes x batch 1 vs 1 process x batch 2, so every update
  sees the same samples whatever the order; LoRA dropout 0, since dropout masks are per process);
* updates == ``estimate_updates(..., world_size=2)``; before/after metrics computed on every rank
  (the log shows both ranks' identical trained-weights digests; metrics.json has before and after);
* the adapter is written once, by rank 0 (the audit hook of test_distributed), and `deepsynth
  generate` loads it;
* kill -9 of rank 1 once a checkpoint is complete: the launcher stops (nothing hangs); the same
  command again resumes from the newest complete checkpoint. The resumed run is the one compared
  with the single-process run above (one FSDP run killed and resumed, not two runs: suite time).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import AUDIT_HOOK, _free_port

from deepsynth.cli import main
from deepsynth.training.checkpoints import MARKER
from deepsynth.training.recommend import estimate_updates

REPO = Path(__file__).resolve().parents[2]
FSDP_CONFIG = REPO / "examples" / "accelerate" / "fsdp.yaml"
SAMPLES, EPOCHS, WORLD = 2, 4, 2

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def _config(path: Path, out: Path, batch_size: int) -> Path:
    path.write_text(textwrap.dedent(f"""\
        preset: tiny_data
        output_dir: {out}
        max_train_samples: {SAMPLES}
        max_eval_samples: 1
        batch_size: {batch_size}
        gradient_accumulation_steps: 1
        num_epochs: {EPOCHS}
        lora_dropout: 0.0
        lora_modules_to_save: [gate]
        max_new_tokens: 4
        checkpoint_every_updates: 1
        save_total_limit: 2
        resume_from_checkpoint: auto
        """), encoding="utf-8")
    return path


def _env(tmp_path: Path, watch: Path) -> dict[str, str]:
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(AUDIT_HOOK, encoding="utf-8")
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "DEEPSYNTH_TEST_WATCH": str(watch),
        "DEEPSYNTH_TEST_WRITES": str(tmp_path / "writes"),
        "CUDA_VISIBLE_DEVICES": "",  # CPU processes, gloo, even on a GPU machine
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }


def _launch(config: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
               "--main_process_port", str(_free_port()), "-m", "deepsynth.cli", "train", "--config", str(config)]
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"timed out:\n{output[-6000:]}") from None
    return process.returncode, output


def _losses(out: Path) -> list[float]:
    history = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def _max_adapter_difference(a: Path, b: Path) -> float:
    left, right = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert left.keys() == right.keys() and left
    return max(float((left[k] - right[k]).abs().max()) for k in left)


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    import psutil

    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "deepsynth.cli" in " ".join(child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    return None


def _kill_rank_1_after_the_first_checkpoint(launcher: subprocess.Popen, out: Path) -> tuple[int, str]:
    deadline = time.monotonic() + 180
    while not list(out.glob(f"checkpoint-*/{MARKER}")):
        assert launcher.poll() is None, launcher.communicate()[0][-6000:]
        assert time.monotonic() < deadline, "no complete checkpoint in time"
        time.sleep(0.05)
    victim = _rank_pid(launcher, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    return _finish(launcher)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The single-process run (batch 2), and the FSDP2 run (2 processes x batch 1, same global batch)
    whose rank 1 is killed with SIGKILL once a checkpoint is complete, then resumed by the same command."""
    tmp_path = tmp_path_factory.mktemp("fsdp")
    single_out, fsdp_out = tmp_path / "single", tmp_path / "fsdp"
    env = _env(tmp_path, fsdp_out)
    fsdp_config = _config(tmp_path / "fsdp.yaml", fsdp_out, batch_size=1)
    killed = _launch(fsdp_config, env, tmp_path)
    single = subprocess.Popen([sys.executable, "-m", "deepsynth.cli", "train", "--config",
                               str(_config(tmp_path / "single.yaml", single_out, batch_size=2))],
                              env={**env, "DEEPSYNTH_TEST_WATCH": str(tmp_path / "unwatched")}, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed_code, killed_log = _kill_rank_1_after_the_first_checkpoint(killed, fsdp_out)
    finished_before_resume = (fsdp_out / "metrics.json").exists()
    code, log = _finish(_launch(fsdp_config, env, tmp_path))
    assert code == 0, log[-6000:]
    single_code, single_log = _finish(single)
    assert single_code == 0, single_log[-6000:]
    return {"tmp": tmp_path, "single": single_out, "fsdp": fsdp_out, "log": killed_log + log,
            "killed_code": killed_code, "finished_before_resume": finished_before_resume}


def test_fsdp2_on_two_cpu_processes_equals_the_single_process_run(runs, monkeypatch, capsys):
    single, fsdp, log = runs["single"], runs["fsdp"], runs["log"]
    expected = estimate_updates(SAMPLES, 1, 1, EPOCHS, world_size=WORLD).effective_updates
    assert expected == estimate_updates(SAMPLES, 2, 1, EPOCHS).effective_updates == EPOCHS

    # Rank 0 alone read the weights (rank 1 built the model on the meta device and received them).
    assert "rank 1: weights not read" in log and "rank 0: weights not read" not in log
    # Really sharded: each rank holds about half of the weights; accelerate's FSDP checkpoints.
    shares = re.findall(r"rank (\d)/2 holds (\d+) of (\d+) weight elements", log)
    assert {rank for rank, _, _ in shares} == {"0", "1"}, log[-6000:]
    for _, local, total in shares:
        assert 0.45 < int(local) / int(total) < 0.55
    checkpoint = max(fsdp.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert (checkpoint / "pytorch_model_fsdp.bin").is_file() and (checkpoint / "optimizer.bin").is_file()

    # Same training as one process with the same global batch.
    digests = dict(re.findall(r"rank (\d+)/2: \d+ optimizer updates, trained-weights sha256 ([0-9a-f]{64})", log))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    single_losses, fsdp_losses = _losses(single), _losses(fsdp)
    assert len(fsdp_losses) == len(single_losses) == expected
    assert max(abs(a - b) for a, b in zip(fsdp_losses, single_losses)) < 1e-4, (fsdp_losses, single_losses)
    assert _max_adapter_difference(fsdp, single) < 1e-5
    routers = [k for k in load_file(str(fsdp / "adapter_model.safetensors")) if k.endswith("mlp.gate.weight")]
    assert routers  # the fully trained router copies, gathered whole

    metrics = json.loads((fsdp / "metrics.json").read_text(encoding="utf-8"))
    reference = json.loads((single / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["optimizer_updates"] == metrics["estimated_updates"] == expected
    assert metrics["feature_cache"]["enabled"] is False  # sharded: the vision encoder runs in the sharded forward
    for phase in ("before", "after"):  # the evaluations ran on the sharded model, every rank in step
        assert abs(metrics["eval"][phase]["loss"] - reference["eval"][phase]["loss"]) < 1e-4
    events = [json.loads(line) for line in (fsdp / "progress.jsonl").read_text(encoding="utf-8").splitlines()]
    # Two segments (killed, resumed): a start each; the resumed one starts at the checkpoint and ends done.
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed_at_update"] >= 1 and events[-1]["event"] == "done"

    # Written once, by rank 0: rank 1 only creates the checkpoint folders (for its rng_state_1.pth).
    writes = runs["tmp"] / "writes"
    assert "adapter_model.safetensors" in writes.with_name("writes.0").read_text()
    rank1 = writes.with_name("writes.1")
    rank1_writes = rank1.read_text().splitlines() if rank1.exists() else []
    unexpected = [w for w in rank1_writes if not re.fullmatch(rf"os\.mkdir {re.escape(str(fsdp))}/checkpoint-\d+", w)]
    assert not unexpected, "\n".join(unexpected)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["generate", "--adapter", str(fsdp), "--text", "Bonjour.", "--max-new-tokens", "3", "--json"]) == 0
    assert "text" in json.loads(capsys.readouterr().out)


def test_fsdp2_kill_9_of_one_rank_then_the_same_command_resumes(runs):
    assert runs["killed_code"] != 0  # torchrun's agent stopped the other rank: nothing hung
    assert not runs["finished_before_resume"], "the run finished before the kill: nothing to resume"
    metrics = json.loads((runs["fsdp"] / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["train"]["resumed_from"] is not None
    # The resumed run's history covers the whole run, and equals the uninterrupted single-process run
    # (test above): the kill lost nothing.
    assert [e["step"] for e in metrics["history"] if "loss" in e] == list(range(1, EPOCHS + 1))
