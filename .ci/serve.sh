#!/usr/bin/env bash
# Serving tests against real servers: a real tritonserver (nvidia-pytriton's binary, python backend)
# on 127.0.0.1 and a local Ray cluster (docs/serving.md). Their client stacks pin protobuf < 7, which
# the workstation venv's onnx does not need, so they get venvs of their own:
#   .venv-serve   the workstation venv's packages (through a .pth) with tritonclient and ray[data] on top
#   .venv-triton  the server's Python: nvidia-pytriton with numpy < 2 (Triton issue #8301)
# An install that fails (no registry) prints why and skips these tests; a failing test fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."
purelib() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
[ -x .venv-serve/bin/python ] || python3 -m venv .venv-serve
purelib .venv/bin/python > "$(purelib .venv-serve/bin/python)/workstation.pth"
if ! .venv-serve/bin/pip install -q 'tritonclient[http,grpc]>=2.40' 'ray[data]>=2.9' 'pyarrow>=14' 2>/dev/null; then
    echo "serve: could not install tritonclient / ray[data]; the Triton and Ray tests are skipped"; exit 0
fi
[ -x .venv-triton/bin/python ] || python3 -m venv .venv-triton
if ! .venv-triton/bin/pip install -q nvidia-pytriton 'numpy<2' 'opencv-python-headless<4.12' onnxruntime click 2>/dev/null; then
    echo "serve: could not install nvidia-pytriton; the real-server tests are skipped"
fi
PYTHONPATH="$PWD" .venv-serve/bin/python -m pytest -q --timeout 900 -p no:cacheprovider \
    tests/test_triton_repository.py tests/test_triton_server.py tests/test_rescore.py tests/test_rescore_cli.py
