#!/usr/bin/env bash
# Submit `cmpl-ray train` to the cluster as a Ray job; this checkout is uploaded as the job's working dir.
# First: ray up cluster.yaml, then bash scripts/cluster/forward_ports.sh (dashboard on 127.0.0.1:8265).
# Usage:
#   BUCKET=s3://my-bucket bash scripts/cluster/submit_train.sh [--set key=value ...]
#   BUCKET=s3://my-bucket GPUS=4 PRESET=ucf101-1pct-r50 DATA=s3://my-bucket/ucf101 bash scripts/cluster/submit_train.sh
# Env (default): PRESET (k400-1pct-r50), DATA ($BUCKET/k400, prepared as in docs/cluster.md), SPLIT (1pct_seed0),
#   GPUS (16: train.num_workers), DECODE_PER_GPU (12 decode actors per GPU), BASE_LR (0.1: the preset's lr for the
#   paper's 16 GPUs; optim.lr = BASE_LR x GPUS / 16), RUN_NAME ($PRESET; re-submitting the same name resumes),
#   RAY_ADDRESS (http://127.0.0.1:8265), DRY_RUN=1 prints the command instead of submitting.
# Extra arguments are appended to `cmpl-ray train` (later --set wins).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${BUCKET:?set BUCKET=s3://your-bucket}"
PRESET=${PRESET:-k400-1pct-r50}
DATA=${DATA:-$BUCKET/k400}
SPLIT=${SPLIT:-1pct_seed0}
GPUS=${GPUS:-16}
DECODE_PER_GPU=${DECODE_PER_GPU:-12}
RUN_NAME=${RUN_NAME:-$PRESET}
LR=$(awk -v b="${BASE_LR:-0.1}" -v g="$GPUS" 'BEGIN { print b * g / 16 }')
export RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
if [ -f ~/.ray/auth_token ]; then export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}; fi
cmd=(ray job submit --working-dir .
     --runtime-env-json '{"excludes": [".git", ".venv", ".whl", ".hypothesis", "outputs", "mlruns", "mlflow.db", "demo_data"]}'
     -- cmpl-ray train --preset "$PRESET"
     --set "data.root=$DATA" --set "data.val_list=$DATA/val.txt"
     --set "data.labeled_list=$DATA/splits/$SPLIT/labeled.txt" --set "data.unlabeled_list=$DATA/splits/$SPLIT/unlabeled.txt"
     --set "train.num_workers=$GPUS" --set "data.decode_actors=$((GPUS * DECODE_PER_GPU))" --set "optim.lr=$LR"
     --set "run.name=$RUN_NAME" --set "run.storage_path=$BUCKET/ray_results" --set "run.output_dir=/home/ubuntu/outputs/$RUN_NAME"
     --set "tracking.uri=http://127.0.0.1:5000"
     "$@")
if [ -n "${DRY_RUN:-}" ]; then printf '%q ' "${cmd[@]}"; echo; else exec "${cmd[@]}"; fi
