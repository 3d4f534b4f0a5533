#!/usr/bin/env bash
# Build anomalib beside anomedge for benchmarks/peers/compare.py: a venv of its own (runs/peers/venv) that
# sees the project venv's packages (torch, timm, onnxruntime, openvino — one copy, the same versions) through
# a .pth line, plus anomalib 2.7.0 and its own dependencies from the registry. Nothing is committed.
#   bash benchmarks/peers/build.sh && runs/peers/venv/bin/python benchmarks/peers/compare.py
set -euo pipefail
cd "$(dirname "$0")/../.."
PROJECT_PY=${PROJECT_PY:-.venv/bin/python}
VENV=runs/peers/venv
[ -x "$PROJECT_PY" ] || { echo "build.sh: $PROJECT_PY not found; run 'make install' first" >&2; exit 2; }
python3 -m venv "$VENV"
SITE=$("$PROJECT_PY" -c "import site; print(site.getsitepackages()[0])")
OWN=$("$VENV/bin/python" -c "import site; print(site.getsitepackages()[0])")
echo "$SITE" > "$OWN/anomedge-project-venv.pth"
"$VENV/bin/python" -m pip install --quiet "anomalib==2.7.0"
"$VENV/bin/python" -c "import anomalib, torch, openvino; print('anomalib', anomalib.__version__, 'torch', torch.__version__, 'openvino', openvino.__version__)"
