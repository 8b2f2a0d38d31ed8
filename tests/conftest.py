"""Shared test set-up: offline, deterministic, small."""

import os

# No test may reach the network: hub lookups fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tiny models: one thread is faster than two (thread start-up dominates), and subprocesses
# (web jobs, distributed runs) inherit the setting through the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


# The slowest files start first: with two workers (pyproject's `-n 2`, a whole file per worker) the
# suite then ends on short files instead of one worker running a long file alone (the durations of
# every run name them). Within a file the order is kept.
SLOW_FILES_FIRST = (
    "test_quickstart.py", "test_fault_injection.py", "test_user_path.py", "test_fsdp.py", "test_web_resume.py",
    "test_web_fuzz.py", "test_benchmark_smoke.py", "test_web_browser.py", "test_distributed.py",
    "test_peers_smoke.py", "test_web_jobs.py", "test_quantization.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: index for index, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
