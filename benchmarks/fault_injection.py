"""Fault injection: ``kill -9`` real ``deepsynth train`` runs at random moments and as checkpoints appear.

One uninterrupted reference run, then series of runs of the same command in one output folder:
each run but the last of a series is killed with SIGKILL, the next one resumes by itself
(``--resume auto``), and the last one runs to the end. A series survives when its last run exits 0
with the planned number of optimizer updates, a loss history of that length, the reference's
``train_loss``, an adapter file byte-for-byte equal to the reference's, no partial checkpoint left
behind, and a foreign ``checkpoint-999`` folder (not DeepSynth's) untouched. Each kill is counted
survived or lost with its series.

Kill moments (``--modes``):
  random      a uniform moment of the reference run after its ``start`` event (imports and model loading
              done), found again in the killed run by its progress events (robust to the machine's load);
  appears     the moment the run starts writing a ``checkpoint-N`` folder: a new one appears, or a partial
              one a kill left gets its first file rewritten (polled every 2 ms);
  writing     a uniform delay after that, within the time the reference took to complete a checkpoint.

Launchers: ``subprocess`` runs the ``deepsynth`` console script (what a user runs); ``forkserver``
forks each run from a Python forkserver that already imported deepsynth and runs
``deepsynth.cli.main(["train", ...])`` (the console script's entry point): the same process and
code, minus ~8 s of imports per run, so that CI can afford many kills.

    python benchmarks/fault_injection.py --kills 30 --json benchmarks/results/fault_injection.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MARKER = "deepsynth-complete.json"  # deepsynth.training.checkpoints.MARKER (kept import-free here)
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
FOREIGN = "checkpoint-999"  # a folder DeepSynth did not write: resume must skip it and nobody may delete it
PLANNED_UPDATES = 9  # 3 samples x 3 epochs, batch 1, no accumulation
RUN_CONFIG = {"checkpoint_every_updates": 1, "save_total_limit": 2}
TRAIN_FLAGS = ["--max-train-samples", "3", "--max-eval-samples", "1", "--epochs", "3", "--grad-accum", "1",
               "--batch-size", "1", "--max-new-tokens", "1", "--preset", "tiny_data", "--resume", "auto"]
MODES = ("random", "appears", "writing")
POLL_SECONDS = 0.002  # fast enough to catch a checkpoint being written (tens of ms or more)


# --- launching and killing ------------------------------------------------------------------------

def _forked_main(argv: list[str], log_path: str) -> None:
    """Body of a forkserver child: ``deepsynth train`` with its output in ``log_path``."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import threading

    import tqdm

    # tqdm's default lock is a multiprocessing semaphore, which a SIGKILLed process cannot release
    # (the resource tracker then warns about leaked semaphores); a thread lock does the same job here.
    tqdm.tqdm.set_lock(threading.RLock())
    from deepsynth.cli import main

    sys.exit(main(argv))


class Launcher:
    """Starts ``deepsynth train`` processes: a fresh console-script process, or a fork of a warm server."""

    def __init__(self, kind: str) -> None:
        if kind not in ("subprocess", "forkserver"):
            raise ValueError(f"launcher: got {kind!r}, expected 'subprocess' or 'forkserver'")
        self.kind = kind
        if kind == "forkserver":
            sys.path.insert(0, str(Path(__file__).resolve().parent))  # the children import this module
            self.context = multiprocessing.get_context("forkserver")
            os.environ.setdefault("MPLBACKEND", "Agg")
            self.context.set_forkserver_preload(
                ["fault_injection", "deepsynth.cli", "deepsynth.training.production_trainer", "matplotlib.pyplot"])

    def start(self, argv: list[str], log: Path) -> Any:
        if self.kind == "subprocess":
            script = Path(sys.executable).with_name("deepsynth")
            command = [str(script)] if script.exists() else [sys.executable, "-m", "deepsynth.cli"]
            with open(log, "ab") as stream:
                return subprocess.Popen(command + argv, stdout=stream, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        from fault_injection import _forked_main as target  # by module name, also when run as a script

        process = self.context.Process(target=target, args=(argv, str(log)))
        process.start()
        return process


def _alive(process: Any) -> bool:
    return process.poll() is None if isinstance(process, subprocess.Popen) else process.is_alive()


def _exit_code(process: Any, timeout: float | None = None) -> int | None:
    if isinstance(process, subprocess.Popen):
        return process.wait(timeout)
    process.join(timeout)
    return process.exitcode


def _kill(process: Any) -> bool:
    """SIGKILL ``process``; True when it was still running (the kill landed)."""
    if not _alive(process):
        return False
    os.kill(process.pid, signal.SIGKILL)
    return _exit_code(process) == -signal.SIGKILL


# --- what a run left --------------------------------------------------------------------------------

def newest_step(state: dict[str, bool]) -> int:
    """The update of the newest complete checkpoint in ``checkpoints()``'s answer (0: none)."""
    return max((int(name.split("-")[1]) for name, done in state.items() if done), default=0)


def checkpoints(out: Path) -> dict[str, bool]:
    """``checkpoint-N`` folders of ``out`` (the foreign one excluded) → whether it is marked complete."""
    try:
        names = [e.name for e in os.scandir(out) if e.is_dir() and CHECKPOINT.match(e.name)]
    except FileNotFoundError:
        return {}
    return {name: (out / name / MARKER).is_file() for name in names if name != FOREIGN}


def _events(out: Path) -> list[dict[str, Any]]:
    try:
        lines = (out / "progress.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return events


def outcome(out: Path, exit_code: int | None) -> dict[str, Any]:
    """What a finished run left in ``out``: exit code, update count, history, loss, adapter digest."""
    result: dict[str, Any] = {"exit_code": exit_code}
    try:
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        adapter = (out / "adapter_model.safetensors").read_bytes()
    except (OSError, ValueError) as error:
        return {**result, "error": f"{type(error).__name__}: {error}"}
    result.update(updates=metrics["optimizer_updates"], train_loss=metrics["train"]["train_loss"],
                  history=sum(1 for h in metrics["history"] if "loss" in h),
                  adapter_sha256=hashlib.sha256(adapter).hexdigest(),
                  partial_checkpoints=sorted(n for n, done in checkpoints(out).items() if not done))
    return result


def problems(result: dict[str, Any], reference: dict[str, Any], out: Path) -> list[str]:
    """How ``result`` differs from the uninterrupted reference (empty: it survived)."""
    found = []
    if result.get("exit_code") != 0:
        found.append(f"exit code {result.get('exit_code')}")
    if "error" in result:
        return found + [result["error"]]
    for key in ("updates", "history", "train_loss", "adapter_sha256"):
        if result[key] != reference[key]:
            found.append(f"{key} {result[key]!r} != {reference[key]!r}")
    if result["partial_checkpoints"]:
        found.append(f"partial checkpoints left: {result['partial_checkpoints']}")
    if not (out / FOREIGN / "notes.txt").is_file():
        found.append(f"the foreign {FOREIGN} was deleted")
    return found


# --- the experiment -----------------------------------------------------------------------------------

@dataclass
class Kill:
    series: int
    mode: str
    delay: float  # seconds after the trigger (the progress event before the drawn moment, or a checkpoint appearing)
    newest_complete: str | None  # right after the kill
    partial: list[str]  # checkpoint folders without a completion marker right after the kill
    launcher: str = "subprocess"  # "subprocess": the console script; "forkserver": a fork of a warm server
    survived: bool | None = None


@dataclass
class Report:
    launcher: str
    reference: dict[str, Any]
    kills: list[Kill] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> list[dict[str, Any]]:
        rows = []
        for mode in MODES:
            mine = [k for k in self.kills if k.mode == mode]
            if mine:
                rows.append({"fault": f"kill -9 ({mode})", "tried": len(mine),
                             "survived": sum(k.survived is True for k in mine),
                             "lost": sum(k.survived is False for k in mine),
                             "left a partial checkpoint": sum(bool(k.partial) for k in mine),
                             "console script": sum(k.launcher == "subprocess" for k in mine)})
        return rows


@dataclass
class Timing:
    """The reference run's timeline: its progress events' times after its ``start`` event, its exit, a save."""

    events: list[float]
    steps: list[int | None]  # the update of each ``log`` event, None for the others
    exit: float
    write: float

    def random_moment(self, rng: random.Random, resumed_at: int) -> tuple[int, float, float]:
        """A uniform moment of a run resuming after update ``resumed_at``, drawn on the reference's timeline.

        Returns (index of this run's event before the moment, the event's time on that timeline,
        seconds after it). A resumed run writes the reference's events minus the updates it skips;
        each event keeps the time the reference spent reaching it.
        """
        kept = [i for i, step in enumerate(self.steps) if step is None or step > resumed_at]
        times = [0.0]
        for position in range(1, len(kept)):
            times.append(times[-1] + self.events[kept[position]] - self.events[kept[position] - 1])
        moment = rng.uniform(0, times[-1] + self.exit - self.events[-1])
        index = max(i for i, t in enumerate(times) if t <= moment)
        return index, times[index], moment - times[index]


def _new_events(out: Path, events_before: int) -> list[dict[str, Any]]:
    return _events(out)[events_before:]


def _rewritten(folder: Path, since_ns: int) -> bool:
    """Whether a file of ``folder`` was written after ``since_ns`` (a partial checkpoint rewritten in place)."""
    try:
        return any(entry.stat().st_mtime_ns > since_ns for entry in os.scandir(folder))
    except FileNotFoundError:
        return False


def _wait_for_trigger(process: Any, out: Path, mode: str, before: dict[str, bool], events_before: int,
                      target: int, launched_ns: int) -> bool:
    """Block until the moment ``mode`` waits for; False when the run ended first.

    ``random``: the run wrote its event number ``target``; ``appears``/``writing``: more than ``target``
    checkpoints are being or were written by this run (a new folder, or a partial one rewritten).
    """
    while _alive(process):
        if mode == "random":
            if len(_new_events(out, events_before)) > target:
                return True
        else:
            written = [name for name in checkpoints(out) if name not in before
                       or (not before[name] and _rewritten(out / name, launched_ns))]
            if len(written) > target:
                return True
        time.sleep(POLL_SECONDS)
    return False


def attempt(launcher: Launcher, argv: list[str], out: Path, log: Path, mode: str | None, timing: Timing,
            rng: random.Random) -> tuple[Any, float | None]:
    """Start one run; kill it as ``mode`` says (None: let it finish). Returns (process, delay or None).

    ``random`` draws a uniform moment of this run (the reference's timeline minus the updates a resumed
    run skips) and waits for the same point of this run: the progress event before that moment, then
    the same time after it (scaled by how fast this run went so far), so that kills stay spread over
    the run whatever the machine's load. Checkpoint kills hit the first, second or third checkpoint the
    run writes (drawn at random among those left), so that kills also land while older checkpoints are
    being rotated away.
    """
    state = checkpoints(out)
    events_before, resumed_at, launched_ns = len(_events(out)), newest_step(state), time.time_ns()
    index, at, offset = timing.random_moment(rng, resumed_at)
    target = index if mode == "random" else rng.randrange(max(1, min(3, PLANNED_UPDATES - resumed_at)))
    process = launcher.start(argv, log)
    if mode is None or not _wait_for_trigger(process, out, mode, state, events_before, target, launched_ns):
        return process, None
    if mode == "random":
        events = _new_events(out, events_before)
        elapsed = events[index]["time"] - events[0]["time"] if index else 0.0
        pace = min(4.0, max(0.25, elapsed / at)) if at > 0.5 else 1.0
        delay = offset * pace
    else:
        delay = 0.0 if mode == "appears" else rng.uniform(0, timing.write)
    time.sleep(delay)
    return process, delay if _kill(process) else None


def reference_run(launcher: Launcher, argv: list[str], out: Path, log: Path) -> tuple[dict[str, Any], Timing]:
    """The uninterrupted run, timed: its outcome, its event timeline and the longest checkpoint write."""
    process = launcher.start(argv, log)
    appeared = None
    writes: list[float] = []
    while _alive(process):
        now = time.perf_counter()
        state = checkpoints(out)
        if appeared is None and any(not done for done in state.values()):
            appeared = now
        elif appeared is not None and all(state.values()):
            writes.append(now - appeared)
            appeared = None
        time.sleep(POLL_SECONDS)
    ended = time.time()
    result = outcome(out, _exit_code(process))
    if result.get("exit_code") != 0 or result.get("updates") != PLANNED_UPDATES:
        raise RuntimeError(f"the reference run failed: {result}; see {log}")
    events = _events(out)
    times = [event["time"] - events[0]["time"] for event in events]
    steps = [event.get("step") if event["event"] == "log" else None for event in events]
    return result, Timing(times, steps, ended - events[0]["time"], max(writes) if writes else 0.05)


def run_series(index: int, launcher: Launcher, argv: list[str], out: Path, kills: int, modes: list[str],
               timing: Timing, rng: random.Random, reference: dict[str, Any], first_mode: int = 0,
               finisher: Launcher | None = None) -> tuple[list[Kill], dict[str, Any]]:
    """Up to ``kills`` killed runs in ``out``, then one run to the end (by ``finisher``, default the same
    launcher), checked against the reference."""
    (out / FOREIGN).mkdir(parents=True)
    (out / FOREIGN / "notes.txt").write_text("not a DeepSynth checkpoint\n")
    log = out.parent / f"series-{index}.log"
    done: list[Kill] = []
    while len(done) < kills:
        mode = modes[(first_mode + len(done)) % len(modes)]
        if mode != "random" and newest_step(checkpoints(out)) >= PLANNED_UPDATES and "random" in modes:
            mode = "random"  # no checkpoint left to write: a kill at a checkpoint would miss
        process, delay = attempt(launcher, argv, out, log, mode, timing, rng)
        if delay is None:  # it ended before the kill: that was the series' last run
            result = outcome(out, _exit_code(process))
            break
        state = checkpoints(out)
        newest = f"checkpoint-{newest_step(state)}" if newest_step(state) else None
        done.append(Kill(index, mode, round(delay, 4), newest, sorted(n for n, ok in state.items() if not ok),
                         launcher.kind))
    else:
        process, _ = attempt(finisher or launcher, argv, out, log, None, timing, rng)
        result = outcome(out, _exit_code(process))
    found = problems(result, reference, out)
    for kill in done:
        kill.survived = not found
    return done, {"series": index, "kills": len(done), "result": result, "problems": found, "log": str(log)}


def inject(kills: int, *, launcher: str = "subprocess", workdir: Path | None = None, seed: int = 0,
           per_series: int = 4, modes: tuple[str, ...] = MODES, console_kills: int = 0) -> Report:
    """Run the experiment: ``kills`` SIGKILLs that landed, in series of ``per_series``.

    ``console_kills``: with the forkserver launcher, first that many more kills of the console script
    (one series; its last run, which is not killed, goes through the forkserver), compared with the
    same reference.
    """
    started = time.perf_counter()
    root = Path(workdir or tempfile.mkdtemp(prefix="deepsynth-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(RUN_CONFIG))
    runner, rng = Launcher(launcher), random.Random(seed)

    def argv(out: Path) -> list[str]:
        return ["train", "--config", str(root / "config.json"), *TRAIN_FLAGS, "--output-dir", str(out)]

    reference, timing = reference_run(runner, argv(root / "reference"), root / "reference", root / "reference.log")
    report = Report(launcher, {**reference, "run_seconds": round(timing.exit, 2),
                               "write_seconds": round(timing.write, 3)})
    console = Launcher("subprocess") if console_kills and launcher == "forkserver" else None
    index = 0
    while True:
        owed = console_kills - sum(k.launcher == "subprocess" for k in report.kills) if console else 0
        left = kills - sum(k.launcher == runner.kind for k in report.kills)
        if owed <= 0 and left <= 0:
            break
        this, quota = (console, owed) if owed > 0 else (runner, min(per_series, left))
        out = root / f"series-{index}"
        # The console script's series is finished by the forkserver: the same command, ~8 s of imports less.
        done, summary = run_series(index, this, argv(out), out, quota, list(modes), timing, rng, reference,
                                   first_mode=len(report.kills), finisher=runner)
        report.kills += done
        report.series.append(summary)
        index += 1
        if index > 4 * kills + 4:
            raise RuntimeError("kills keep missing their runs: the runs end before the kill moments")
    report.seconds = round(time.perf_counter() - started, 1)
    return report


def print_report(report: Report) -> None:
    rows = report.table()
    total = {"fault": "total", **{k: sum(r[k] for r in rows) for k in rows[0] if k != "fault"}} if rows else {}
    headers = ["fault", "tried", "survived", "lost", "left a partial checkpoint", "console script"]
    widths = [max(len(h), *(len(str(r[h])) for r in rows + [total])) for h in headers]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows + [total]:
        print("  ".join(str(row[h]).ljust(w) for h, w in zip(headers, widths)))
    for summary in report.series:
        if summary["problems"]:
            print(f"series {summary['series']} LOST: {'; '.join(summary['problems'])} (log: {summary['log']})")
    print(f"{len(report.series)} series, launcher {report.launcher}, {report.seconds} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=30, help="SIGKILLs that must land (default 30)")
    parser.add_argument("--launcher", choices=("subprocess", "forkserver"), default="subprocess")
    parser.add_argument("--per-series", type=int, default=3, help="kills before a series' run to the end")
    parser.add_argument("--console-kills", type=int, default=0,
                        help="with --launcher forkserver: first this many kills of the console script itself")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temporary folder (kept)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    modes = tuple(m for m in args.modes.split(",") if m)
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes: expected a comma-separated subset of {', '.join(MODES)}")
    report = inject(args.kills, launcher=args.launcher, workdir=args.workdir, seed=args.seed,
                    per_series=args.per_series, modes=modes, console_kills=args.console_kills)
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(report), indent=2))
    return 0 if all(k.survived for k in report.kills) else 1


if __name__ == "__main__":
    sys.exit(main())
