"""Training jobs of the web app: one OS process per run, state in SQLite, a supervisor thread.

A job is a folder ``<state_dir>/jobs/<id>/`` holding ``config.yaml`` (``TrainerConfig.to_dict()``,
exactly what the training process loads), ``train.log`` (its stdout/stderr) and ``output/`` (the
trainer's output folder, with ``progress.jsonl`` and ``metrics.json``). The process is

    python -m deepsynth.cli train --config <job>/config.yaml --data <file> [--eval-data <file>]
                                  --output-dir <job>/output

started in its own session (so it survives a server restart and its whole process group can be
signalled). Its row in ``<state_dir>/jobs.sqlite3`` records status, pid (with the process start
time, so a recycled pid is never mistaken for it) and the progress read from ``progress.jsonl``.

The modules, by role: :mod:`.requests` (a job request checked, its config), :mod:`.store` (the
SQLite table, the state folder's lock), :mod:`.processes` (the command line, starting, /proc,
signals), :mod:`.supervisor` (:class:`~.supervisor.JobManager`: queue, watch, cancel, resume) and
:mod:`.artifacts` (what a job's folder holds: adapter, checkpoints, metrics, history, log).

The Hub token reaches the training process only through its environment (``HF_TOKEN``): it is not a
field of the saved config, the database or any message.
"""
