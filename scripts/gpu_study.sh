#!/usr/bin/env bash
# The GPU study lives in studies/ with the other study harnesses; this path is kept for the device runbook.
exec bash "$(dirname "$0")/../studies/gpu_study.sh" "$@"
