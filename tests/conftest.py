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
