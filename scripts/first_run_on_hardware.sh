#!/bin/sh
# First run on hardware: the evidence this repository still lacks (an engine built, its ledger row, its
# latency, the device's facts), as ONE report.json. Nothing here has been run on real hardware yet; see
# docs/jetson.md, "First run on hardware". Run from the repository root, with bckd-pipeline installed.
#
#   scripts/first_run_on_hardware.sh gpu                             # a host with an NVIDIA GPU, TensorRT, pycuda
#   scripts/first_run_on_hardware.sh jetson ssh://nvidia@192.168.55.1 [TARGET]   # host + a Jetson over SSH
#   scripts/first_run_on_hardware.sh jetson-ingest RUN_DIR RESULT_DIR            # a Jetson run by hand (README.txt)
#
# Output: runs/first-run-<mode>/report.json (+ report.md, report.html, manifest.json) and a summary on stdout.
# Exit code: the pipeline's (0 measured, 1 parity failed or device build failed, 2 bad input, 3 pending).
set -eu
mode="${1:-}"
out_root="${FIRST_RUN_OUT:-runs}"

summary() {
  python3 - "$1/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"report {sys.argv[1]}: target {r['target']}, status {r['status']}, exit {r['exit_code']}")
for s in r["stages"]:
    lat = s["latency_ms"]["p50"]
    print(f"  {s['name']:22s} {s['status']:15s} mIoU {s['miou'] if s['miou'] is None else round(s['miou'], 2)!s:7s} "
          f"agreement {s['pixel_agreement']!s:.6s} p50 {lat if lat is None else round(lat, 3)} ms  {s['device']}")
d = r.get("device") or {}
e = d.get("engine") or {}
f = d.get("facts") or {}
print(f"  engine: {e.get('path')} sha256 {str(e.get('sha256'))[:16]} typing {(e.get('build') or {}).get('typing')} "
      f"layers {(e.get('build') or {}).get('layer_precisions')} dla {(e.get('build') or {}).get('dla')}")
print(f"  device: {f.get('model') or (f.get('gpu') or {}).get('name')} L4T {f.get('l4t')} JetPack {f.get('jetpack')} "
      f"TensorRT {f.get('tensorrt')} power {f.get('power_mode')} clocks pinned "
      f"{(f.get('clocks') or {}).get('pinned_at_max')} throttling {f.get('throttling')}")
if d.get("fallback"):
    print(f"  NO ENGINE: {d['fallback']}")
PY
}

case "$mode" in
  gpu)
    out="$out_root/first-run-tensorrt"
    bckd-pipeline doctor || true
    nvidia-smi || true
    python3 -m pytest -q tests/test_tensorrt.py -k "real_" -p no:cacheprovider || true   # real build + run vs ONNX Runtime
    set +e
    bckd-pipeline run --preset smoke --target tensorrt --out "$out" --no-progress
    code=$?
    set -e
    ;;
  jetson)
    device="${2:?give the Jetson as ssh://user@host}"
    target="${3:-jetson}"
    out="$out_root/first-run-$target"
    set +e
    bckd-pipeline run --preset smoke --target "$target" --out "$out" --no-progress --device "$device"
    code=$?
    set -e
    echo "for reproducible latency, run on the device first: sudo nvpmodel -m 0 && sudo jetson_clocks"
    ;;
  jetson-ingest)
    out="${2:?give the RUN_DIR of the pending run}"
    result="${3:?give the out/ folder the agent wrote on the Jetson}"
    set +e
    bckd-pipeline ingest "$out" "$result"
    code=$?
    set -e
    ;;
  *)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
[ -f "$out/report.json" ] && summary "$out"
exit "$code"
