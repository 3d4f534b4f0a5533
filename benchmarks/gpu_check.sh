#!/usr/bin/env bash
# One command for the first machine with an NVIDIA GPU + TensorRT: build the engines, run the GPU tests
# (parity of TensorRT / onnxruntime-gpu vs onnxruntime CPU and the torch reference), time every backend,
# and write the table.
#   bash benchmarks/gpu_check.sh [ARTIFACT] [OUT_DIR]
# Needs: pip install -e ".[export,tensorrt,dev]" --extra-index-url https://pypi.nvidia.com
#        (and onnxruntime-gpu instead of onnxruntime for the CUDA / TensorRT execution providers).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${2:-gpu_check_out}
mkdir -p "$OUT"
ELPV=$($PY -c "import elpv_dataset, os; print(os.path.join(os.path.dirname(elpv_dataset.__file__), 'data', 'images'))")

nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import tensorrt, onnxruntime as ort; print('TensorRT', tensorrt.__version__, '| onnxruntime', ort.__version__, ort.get_available_providers())" | tee -a "$OUT/gpu.txt"

ART=${1:-}
if [ -z "$ART" ]; then
  ART="$OUT/artifact"
  rm -rf "$ART"
  ad-export elpv:mono --detector patchcore --out "$ART"
fi
# Reduced-precision ONNX variants (strongly typed TensorRT builds take precision from the ONNX).
ad-quantize "$ART" --precision fp16 || echo "fp16 variant failed" | tee -a "$OUT/gpu.txt"
ad-quantize "$ART" --precision int8 --calib "$ELPV" || echo "int8 variant failed" | tee -a "$OUT/gpu.txt"

for P in fp32 fp16 int8; do
  cp -r "$ART" "$OUT/engine-$P"
  { time $PY -m anomedge.export.tensorrt "$OUT/engine-$P" --precision "$P" --batch 1,1,8 \
        --timing-cache "$OUT/timing.cache"; } 2>&1 | tee "$OUT/build-$P.log" || true
done

# Unit + GPU tests (TensorRT parity, CUDA graph, refusal of mismatching plans, EP fallback refusal).
$PY -m pytest -q -ra -m "tensorrt or gpu" tests/test_tensorrt.py tests/test_onnxruntime_providers.py \
    | tee "$OUT/tests.txt" || true

# Latency + parity vs the torch reference, batch 1, every backend and precision.
{
  for P in fp32 fp16 int8; do
    echo "## TensorRT $P"
    ad-bench "$OUT/engine-$P" --data "$ELPV" --limit 40 --backends torch,tensorrt --runs 200 || true
    echo "## onnxruntime TensorRT EP / CUDA EP $P"
    ad-bench "$ART" --data "$ELPV" --limit 40 --backends onnxruntime --device tensorrt --precision "$P" --runs 200 || true
    ad-bench "$ART" --data "$ELPV" --limit 40 --backends onnxruntime --device cuda --precision "$P" --runs 200 || true
  done
  echo "## host vs graph scoring placement"
  $PY benchmarks/bench_placement.py "$ART" --images "$ELPV" --runs 200
} 2>&1 | tee "$OUT/table.md"
du -sh "$ART" "$OUT"/engine-* | tee -a "$OUT/table.md"
echo "wrote $OUT/table.md"
