#!/usr/bin/env bash
# The CamVid table and training-cost measurements in one go on a CUDA machine.
# Usage: bash benchmarks/gpu_session.sh OUTDIR   (expects .bench/camvid from prepare_camvid.py)
set -uo pipefail
out=${1:?output folder}
mkdir -p "$out"
nvidia-smi -L
python3 -c "import torch, segmentation_models_pytorch as smp; print('torch', torch.__version__, 'smp', smp.__version__, torch.cuda.get_device_name())"
# A seconds-long end-to-end check of the CUDA path (AMP, data loaders) before the long runs.
timeout 120 python3 -m bckd_pipeline.cli run --preset smoke --train-device cuda --out /tmp/smoke --no-progress || exit 1
timeout 150 python3 benchmarks/train_cost.py --device cuda --crop 144,192 --batch 8 --steps 20 > "$out/cost_144x192.json"
timeout 150 python3 benchmarks/train_cost.py --device cuda --crop 512,512 --batch 8 --steps 10 > "$out/cost_512.json"
timeout "${CAMVID_TIMEOUT:-450}" python3 benchmarks/camvid_table.py --root .bench/camvid --out /tmp/cv --jobs "${JOBS:-6}" \
  --device cuda --seeds 0,1 --num-workers 2 --deadline "${DEADLINE:-300}" 2>&1 | tee "$out/camvid.log"
cp /tmp/cv/results.json /tmp/cv/table.md "$out/" 2>/dev/null
ls -la "$out"
