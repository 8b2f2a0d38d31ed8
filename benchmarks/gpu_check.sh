#!/usr/bin/env bash
# GPU check (docs/performance.md). No network; results on stdout and in $OUT (or ./).
#
#   bash benchmarks/gpu_check.sh                 # DeepSeek-OCR-2 at real dimensions, random bf16 weights, a few
#                                                # LoRA training steps per preset: tokens/s, MFU, peak memory
#                                                # (hard limit 290 s) -> gpu_check.json
#   bash benchmarks/gpu_check.sh --real-dims     # benchmarks/real_dims.py: DeepSeek-OCR v1 and DeepSeek-OCR-2 at
#                                                # real dimensions x tiny_data / high_capacity_moe / qlora_4bit,
#                                                # end to end (two updates, adapter reload, merge, export), bf16
#                                                # (hard limit 540 s) -> real_dims.json
#   bash benchmarks/gpu_check.sh --trainer       # benchmarks/trainer_vs_baseline.py at real dimensions: DeepSynth vs
#                                                # the plain Trainer + PEFT script on DeepSeek-OCR v1 Base mode,
#                                                # tiny_data, 2 A4 pages x 3 epochs (batch 1, accumulation 2),
#                                                # 2 paired rounds, then torch.profiler over one update of each
#                                                # (hard limit 540 s) -> trainer_real_dims.json, profile_real_dims.json
#   bash benchmarks/gpu_check.sh --user-path     # benchmarks/user_path.py: replicas of DeepSeek-OCR and DeepSeek-OCR-2
#                                                # written to disk, then the user's commands from them (train on
#                                                # A4 PDFs with tiny_data and qlora_4bit, eval, export --merge,
#                                                # generate --model / --adapter), bf16, peak RSS and CUDA peak of
#                                                # each (hard limit 560 s) -> user_path.json
#   bash benchmarks/gpu_check.sh --user-path --tiny        # the same on shrunken configs, on the CPU (the suite's smoke)
#   bash benchmarks/gpu_check.sh --fsdp          # FSDP2: with >= 2 GPUs, `deepsynth train` under
#                                                # examples/accelerate/fsdp.yaml on every GPU (embedded model, the
#                                                # sharded evaluation and save); then benchmarks/fsdp_real_dims.py
#                                                # (DeepSeek-OCR v1 fp32, 2 CPU processes vs 1: peak RSS per rank;
#                                                # the lent machine's RAM fits it) (hard limit 540 s)
#                                                # -> fsdp_run/, fsdp_real_dims.json
#   bash benchmarks/gpu_check.sh --dry-run                 # tiny configs on the CPU: check the scripts only
#   bash benchmarks/gpu_check.sh --real-dims --tiny        # same for the real-dimensions cases
#   bash benchmarks/gpu_check.sh --trainer --tiny-dims     # same for the trainer comparison
#   bash benchmarks/gpu_check.sh --fsdp --tiny             # same for the FSDP2 measurement
# Arguments after the mode go to the Python script (e.g. --cases deepseek_ocr:qlora_4bit).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: not available"
if [ "${1:-}" = "--real-dims" ]; then
  shift
  # --min-free-gb 0: on a GPU machine host RAM is not the limit; each case still runs in its own process.
  exec timeout 540 python benchmarks/real_dims.py --all --min-free-gb 0 --json "${OUT:-.}/real_dims.json" "$@"
fi
if [ "${1:-}" = "--user-path" ]; then
  shift
  if [ "${1:-}" = "--tiny" ]; then
    shift
    exec python benchmarks/user_path.py --tiny "$@"
  fi
  replicas="${REPLICAS:-/tmp/deepsynth-replicas}"
  deadline=$((SECONDS + 560))
  for family in deepseek-ocr deepseek-ocr-2; do
    [ -f "$replicas/$family/model.safetensors.index.json" ] || \
      timeout $((deadline - SECONDS)) python benchmarks/user_path.py replica --family "$family" --out "$replicas/$family"
  done
  exec timeout $((deadline - SECONDS)) python benchmarks/user_path.py run --replica "$replicas/{family}" \
    --work "${OUT:-.}/user-path-work" --json "${OUT:-.}/user_path.json" "$@"
fi
if [ "${1:-}" = "--trainer" ]; then
  shift
  shape=(--model deepseek-ocr --preset tiny_data --samples 2 --batch-size 1 --grad-accum 2 --epochs 3)
  # One deadline for both steps: the comparison first (what issue 15 asks), then the profiles.
  deadline=$((SECONDS + 540))
  timeout 400 python benchmarks/trainer_vs_baseline.py compare "${shape[@]}" --rounds 2 \
    --variants deepsynth,baseline-scoped --json "${OUT:-.}/trainer_real_dims.json" "$@"
  exec timeout $((deadline - SECONDS)) python benchmarks/trainer_vs_baseline.py profile "${shape[@]}" --epochs 1 \
    --profile-update 1 --json "${OUT:-.}/profile_real_dims.json" "$@"
fi
if [ "${1:-}" = "--fsdp" ]; then
  shift
  deadline=$((SECONDS + 540))
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  if [ "${gpus:-0}" -ge 2 ]; then
    timeout 240 python -m accelerate.commands.launch --config_file examples/accelerate/fsdp.yaml \
      --num_processes "$gpus" -m deepsynth.cli train --preset tiny_data --max-train-samples 4 --epochs 2 \
      --max-new-tokens 8 --resume never --output-dir "${OUT:-.}/fsdp_run"
  else
    echo "gpu_check --fsdp: ${gpus:-0} GPU(s): FSDP2 across GPUs needs 2 or more (NCCL: one rank per GPU); skipped"
  fi
  exec timeout $((deadline - SECONDS)) python benchmarks/fsdp_real_dims.py --json "${OUT:-.}/fsdp_real_dims.json" "$@"
fi
exec timeout 290 python benchmarks/gpu_check.py --json "${OUT:-.}/gpu_check.json" "$@"
