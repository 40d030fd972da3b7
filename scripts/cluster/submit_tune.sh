#!/usr/bin/env bash
# Submit a `cmpl-ray tune` sweep to the cluster as a Ray job (the Tune driver runs on the head; each trial is a
# Ray Train run on its own GPUs). First: ray up cluster.yaml, then bash scripts/cluster/forward_ports.sh.
# Usage:
#   BUCKET=s3://my-bucket bash scripts/cluster/submit_tune.sh [search_spaces/table3_aux_arch.yaml] [tune options]
#   BUCKET=s3://my-bucket GPUS_PER_TRIAL=2 CONCURRENT=8 bash scripts/cluster/submit_tune.sh search_spaces/fig4a_threshold.yaml
# Env (default): PRESET (k400-1pct-r50), DATA ($BUCKET/k400), SPLIT (1pct_seed0), GPUS_PER_TRIAL (4),
#   CONCURRENT (4 trials at once: GPUS_PER_TRIAL x CONCURRENT GPUs), DECODE_PER_GPU (12), BASE_LR (0.1 for 16 GPUs),
#   RAY_ADDRESS (http://127.0.0.1:8265), DRY_RUN=1 prints the command instead of submitting.
# Resume an interrupted sweep: ... submit_tune.sh --resume SWEEP_NAME
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${BUCKET:?set BUCKET=s3://your-bucket}"
SPACE=search_spaces/table3_aux_arch.yaml
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then SPACE=$1; shift; fi
PRESET=${PRESET:-k400-1pct-r50}
DATA=${DATA:-$BUCKET/k400}
SPLIT=${SPLIT:-1pct_seed0}
GPUS=${GPUS_PER_TRIAL:-4}
DECODE_PER_GPU=${DECODE_PER_GPU:-12}
LR=$(awk -v b="${BASE_LR:-0.1}" -v g="$GPUS" 'BEGIN { print b * g / 16 }')
export RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
if [ -f ~/.ray/auth_token ]; then export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}; fi
cmd=(ray job submit --working-dir .
     --runtime-env-json '{"excludes": [".git", ".venv", ".whl", ".hypothesis", "outputs", "mlruns", "mlflow.db", "demo_data"]}'
     -- cmpl-ray tune "$SPACE" --preset "$PRESET" --storage "$BUCKET/tune" --max-concurrent "${CONCURRENT:-4}"
     --set "data.root=$DATA" --set "data.val_list=$DATA/val.txt"
     --set "data.labeled_list=$DATA/splits/$SPLIT/labeled.txt" --set "data.unlabeled_list=$DATA/splits/$SPLIT/unlabeled.txt"
     --set "train.num_workers=$GPUS" --set "data.decode_actors=$((GPUS * DECODE_PER_GPU))" --set "optim.lr=$LR"
     --set "tracking.uri=http://127.0.0.1:5000"
     "$@")
if [ -n "${DRY_RUN:-}" ]; then printf '%q ' "${cmd[@]}"; echo; else exec "${cmd[@]}"; fi
