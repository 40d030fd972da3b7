#!/usr/bin/env bash
# Create .venv and install cmpl-ray with the CPU build of torch (no multi-GB CUDA wheels).
# Versions come from constraints.txt (the lock of tested versions, written by scripts/lock.sh); CMPL_NO_LOCK=1
# resolves from pyproject.toml's lower bounds instead. GPU nodes: set
# CMPL_TORCH='torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cu128' or install a CUDA torch
# first; see docs/cluster.md "GPU install".
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
LOCK=(-c constraints.txt)
if [ "${CMPL_NO_LOCK:-0}" = 1 ]; then LOCK=(); fi
python -m pip install -q ${CMPL_TORCH:-torch==2.13.0} "${LOCK[@]}" -e ".[test${CMPL_EXTRAS:-}]"
python -c "import torch, ray, decord, mlflow, kornia; print('env ok: torch', torch.__version__, 'ray', ray.__version__, 'mlflow', mlflow.__version__)"
