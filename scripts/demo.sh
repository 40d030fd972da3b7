#!/usr/bin/env bash
# Set up .venv (if needed), write the synthetic video set, train CMPL on a local Ray, log to MLflow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec cmpl-ray demo "$@"
