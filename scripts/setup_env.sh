#!/usr/bin/env bash
# Create .venv and install cmpl-ray with the CPU build of torch (no multi-GB CUDA wheels).
# GPU nodes: set CMPL_TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128' or install a
# CUDA torch first; see README "GPU install".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and in the same resolver run as the project, so nothing pulls a CUDA build
python -m pip install -q ${CMPL_TORCH:-torch==2.13.0} -e ".[test${CMPL_EXTRAS:-}]"
python -c "import torch, ray, decord, mlflow, kornia; print('env ok: torch', torch.__version__, 'ray', ray.__version__, 'mlflow', mlflow.__version__)"
