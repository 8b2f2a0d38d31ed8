#!/usr/bin/env bash
# GPU check (docs/performance.md): DeepSeek-OCR-2 at real dimensions, random bf16 weights, a few LoRA
# training steps per preset; tokens/s, MFU, peak memory. No network. Finishes in under 5 minutes
# (hard limit 290 s). Results: stdout and $OUT/gpu_check.json (or ./gpu_check.json).
#   bash benchmarks/gpu_check.sh              # on a CUDA machine
#   bash benchmarks/gpu_check.sh --dry-run    # tiny config on the CPU: checks the script only
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: not available"
exec timeout 290 python benchmarks/gpu_check.py --json "${OUT:-.}/gpu_check.json" "$@"
