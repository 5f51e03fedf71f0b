#!/usr/bin/env bash
# Short CUDA checks: training cost under the trainer's bf16 autocast, and the CUDA-only code paths.
# Usage: bash benchmarks/gpu_checks.sh OUTDIR
set -u
out=${1:?output folder}
mkdir -p "$out"
cli() { timeout "$1" python3 -m bckd_pipeline.cli "${@:2}" --train-device cuda --no-progress; }
timeout 100 python3 benchmarks/train_cost.py --device cuda --crop 512,512 --batch 8 --steps 10 --time-only > "$out/cost_512_bf16.json"
timeout 60 python3 benchmarks/train_cost.py --device cuda --crop 144,192 --batch 8 --steps 20 --time-only > "$out/cost_144x192_bf16.json"
cli 60 run --preset smoke --out /tmp/c1 --train-precision bf16 --channels-last; echo "run smoke bf16 channels_last: rc=$?"
cli 60 train-teacher --preset smoke --out /tmp/c2 --train-precision fp16; echo "train-teacher smoke fp16: rc=$?"
cli 90 train-teacher --preset smoke --out /tmp/c3 --iters 10 --compile; echo "train-teacher smoke compile: rc=$?"
cat "$out"/*.json
