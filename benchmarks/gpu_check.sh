#!/usr/bin/env bash
# The first run on a machine with an NVIDIA GPU, in one command: install the GPU stack, build the
# fp32 / fp16 / int8 TensorRT engines and the graph-placement engine (scoring head inside), run every
# GPU / TensorRT test (parity vs onnxruntime CPU), and time every backend against the torch
# reference (p50 / p99, parity), torch on CUDA included. Budget: under 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh [--cuda 12|13] [--wheels DIR] [--no-install] [--artifact ART]
#                                [--out DIR] [--python PY] [--dry-run]
#
#   --cuda 12|13   the driver's CUDA major (nvidia-smi; 13 needs driver >= 580). Default: 12.
#   --wheels DIR   install from a folder of wheels only (pip --no-index --find-links DIR), for GPU
#                  machines without registry access; fill it elsewhere (same Python and platform) with
#                  pip download ".[export,dev,tensorrt-cu12]" setuptools -d DIR --extra-index-url https://pypi.nvidia.com
#   --no-install   use the current environment as it is.
#   --artifact ART measure this artifact (a copy); default: export elpv:mono PatchCore into OUT once.
#   --dry-run      print the commands, run nothing (tests/test_gpu_check.py checks them against the CLI).
# Reruns are idempotent: engines are rebuilt into fresh copies, the exported artifact is reused.
# Every step runs; a failed step is reported and makes the exit status 1 (nothing is hidden).
set -uo pipefail
cd "$(dirname "$0")/.."

CUDA=12 WHEELS="" INSTALL=1 ART="" OUT=gpu_check_out PY=${PYTHON:-python} DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) CUDA=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --artifact) ART=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    *) echo "gpu_check.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
case "$CUDA" in 12|13) ;; *) echo "gpu_check.sh: --cuda $CUDA: expected 12 or 13" >&2; exit 2 ;; esac

FAILED=()
START=$(date +%s)
# run CMD...: print it; run it unless --dry-run; a failure is recorded, never swallowed.
show() { printf '+'; printf ' %q' "$@"; }
run() {
  show "$@"; echo
  [ "$DRY" = 1 ] && return 0
  "$@" || { echo "!! failed ($?): $*"; FAILED+=("$*"); return 1; }
}
# log FILE CMD...: run, with the output also in FILE.
log() {
  local file=$1; shift
  show "$@"; echo " > $file"
  [ "$DRY" = 1 ] && return 0
  "$@" 2>&1 | tee "$file"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || { echo "!! failed ($rc): $*"; FAILED+=("$*"); }
  return "$rc"
}

mkdir -p "$OUT"
PIP=("$PY" -m pip install --upgrade-strategy only-if-needed)
if [ -n "$WHEELS" ]; then PIP+=(--no-index --find-links "$WHEELS"); else PIP+=(--extra-index-url https://pypi.nvidia.com); fi

if [ "$INSTALL" = 1 ]; then
  run "${PIP[@]}" -e ".[export,dev,tensorrt-cu$CUDA]"
  # onnxruntime-gpu shares the base install's onnxruntime module folder: keep only the GPU build.
  ORT_GPU=$("$PY" -m pip show onnxruntime-gpu 2>/dev/null | sed -n 's/^Version: //p')
  ORT_GPU=${ORT_GPU:-$("$PY" -c "import tomllib,re;e=tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies'];print(re.search(r'==([0-9.]+)',[r for r in e['cu$CUDA'] if r.startswith('onnxruntime-gpu')][0]).group(1))")}
  run "$PY" -m pip uninstall -y onnxruntime onnxruntime-gpu
  run "${PIP[@]}" --no-deps --force-reinstall "onnxruntime-gpu==$ORT_GPU"
fi

if [ "$DRY" = 0 ]; then
  nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv | tee "$OUT/gpu.txt"
  "$PY" -c "import tensorrt, onnxruntime as ort, torch; print('TensorRT', tensorrt.__version__, '| onnxruntime', ort.__version__, ort.get_available_providers(), '| torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
fi

DATA=elpv:mono
if [ -z "$ART" ]; then
  ART="$OUT/artifact"
  if [ -f "$ART/metadata.json" ]; then echo "reusing $ART"; else
    run ad-export "$DATA" --detector patchcore --out "$ART" --placement graph --quiet
  fi
fi
# Reduced-precision ONNX variants (strongly typed TensorRT builds take their precision from the ONNX).
run ad-quantize "$ART" --precision fp16
run ad-quantize "$ART" --precision int8 --calib "$DATA" --limit 64

# One engine per copy (an artifact holds one model.engine); graph = the merged model.graph.onnx.
for P in fp32 fp16 int8 graph; do
  DIR="$OUT/engine-$P"
  run rm -rf "$DIR"
  run cp -r "$ART" "$DIR"
  if [ "$P" = graph ]; then BUILD=(--precision fp32 --placement graph); else BUILD=(--precision "$P"); fi
  log "$OUT/build-$P.log" "$PY" -m anomedge.export.tensorrt "$DIR" "${BUILD[@]}" --batch 1,1,8
done

# Every GPU / TensorRT test (parity with onnxruntime CPU, CUDA graphs, timing cache, provider checks).
log "$OUT/tests.txt" "$PY" -m pytest -q -ra -m "gpu or tensorrt" tests/

# p50 / p99 and parity vs the torch reference (CPU), batch 1, per backend.
B=(--data "$DATA" --limit 40 --runs 200)
log "$OUT/bench-cpu.txt" ad-bench "$ART" "${B[@]}" --backends onnxruntime:fp32,onnxruntime:fp16,onnxruntime:int8 --device cpu
log "$OUT/bench-torch-cuda.txt" ad-bench "$ART" "${B[@]}" --backends torch:fp32 --device cuda
for P in fp32 fp16 int8; do
  log "$OUT/bench-trt-$P.txt" ad-bench "$OUT/engine-$P" "${B[@]}" --backends "tensorrt:$P" --device cuda
  log "$OUT/bench-ort-cuda-$P.txt" ad-bench "$ART" "${B[@]}" --backends "onnxruntime:$P" --device cuda
  log "$OUT/bench-ort-trt-$P.txt" ad-bench "$ART" "${B[@]}" --backends "onnxruntime:$P" --device tensorrt
done
log "$OUT/bench-trt-graph.txt" ad-bench "$OUT/engine-graph" "${B[@]}" --backends tensorrt:fp32 --device cuda --placements graph
[ "$DRY" = 1 ] || for f in "$OUT"/bench-*.txt; do echo "## $(basename "$f" .txt)"; cat "$f"; echo; done > "$OUT/table.md"

[ "$DRY" = 1 ] || du -sh "$ART" "$OUT"/engine-* | tee -a "$OUT/table.md"
echo "gpu_check: $(( $(date +%s) - START )) s; results in $OUT/table.md"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "gpu_check: ${#FAILED[@]} step(s) failed:"; printf '  %s\n' "${FAILED[@]}"; exit 1
fi
