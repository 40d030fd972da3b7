#!/usr/bin/env bash
# Forward the head's loopback-only services to this machine through Ray's SSH session (nothing on the cluster
# listens publicly):
#   Ray dashboard + Jobs API  http://127.0.0.1:8265   (ray job submit / scripts/cluster/submit_*.sh use it)
#   MLflow UI                 http://127.0.0.1:5000
# Usage: bash scripts/cluster/forward_ports.sh [cluster.yaml]      (Ctrl-C closes the tunnels)
# Dashboard only: ray dashboard cluster.yaml    (one port; `ray exec -p PORT` forwards several, same number locally)
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=${1:-cluster.yaml}
echo "dashboard: http://127.0.0.1:8265   MLflow: http://127.0.0.1:5000   (Ctrl-C closes the tunnels)"
exec ray exec "$CLUSTER" 'while true; do sleep 3600; done' --port-forward 8265 --port-forward 5000
