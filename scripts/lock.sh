#!/usr/bin/env bash
# Re-resolve the dependencies from pyproject.toml's lower bounds in a throw-away venv and write the versions
# it got to constraints.txt: the lock that scripts/setup_env.sh (and so CI and the demo) install from.
# Why a constraints file and not uv.lock: uv does not look at the CPU torch wheel on this disk and pulls a
# CUDA build; pip's `-c` keeps torch out of the lock (the installer pins it per machine: CPU vs CUDA).
# Run it when you change a dependency, then run the tests (`bash scripts/test.sh`) and commit both.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m venv "$TMP/venv"
"$TMP/venv/bin/python" -m pip install -q --upgrade pip
"$TMP/venv/bin/python" -m pip install -q ${CMPL_TORCH:-torch==2.13.0} -e ".[test]"
{
  echo "# Tested versions (scripts/lock.sh, $(date -u +%Y-%m-%d), Python $("$TMP/venv/bin/python" -c 'import sys; print(sys.version.split()[0])'), $(uname -m))."
  echo "# torch is not locked here: scripts/setup_env.sh pins it per machine (CPU: torch==2.13.0; GPU: CMPL_TORCH)."
  "$TMP/venv/bin/python" -m pip freeze --exclude-editable | grep -viE '^(torch|nvidia-|triton|cuda-)'
} > constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) pins)"
