#!/usr/bin/env bash
# Full-length ablation (issue 17): the queue of ablation.py invocations, most informative first.
# Start it twice (two workers, one thread each); they share the output files and take turns cell by
# cell (ablation.py's claims), and a restart resumes from the files. See docs/quality.md.
#   setsid nohup nice -n 19 env OMP_NUM_THREADS=1 bash benchmarks/quality/run_full.sh > /tmp/w1.log 2>&1 &
set -u
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
Q=benchmarks/quality
SWEEP="legacy recommended lr_x3 lr_x10 lr_x30"
FLAT="flat_x10 flat_x3"
TINY="--model tiny --full-length --eval-samples 12 --max-new-tokens 64 --out $Q/results_full_tiny.jsonl"
SMOL="--model smollm2 --full-length --eval-samples 4 --max-new-tokens 128 --out $Q/results_full_smollm2.jsonl"
$PY $Q/ablation.py $TINY --n 3 10 --seeds 0 1 2 --configs $SWEEP
$PY $Q/ablation.py $TINY --n 3 10 --seeds 0 1 2 --configs $FLAT
$PY $Q/ablation.py $TINY --n 50 --seeds 0 --configs $SWEEP $FLAT
$PY $Q/ablation.py $SMOL --n 3 --seeds 0 --configs recommended lr_x10
$PY $Q/ablation.py $TINY --n 50 --seeds 1 2 --configs $SWEEP $FLAT
