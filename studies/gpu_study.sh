#!/usr/bin/env bash
# GPU study in one command (issue 18): supervised / FixMatch / CMPL on a suite family, R18-class networks at
# 112 px, 3 seeds, plus bench_gpu's compute step, within 8 minutes; results under $OUT (studies/gpu_study.py).
#
# Why a wrapper: the lent GPU machine has no network and no Ray/decord/PyAV/kornia, and the device tool runs one
# bash line from the repository root with $OUT set. This installs carried wheels if any (.whl/, e.g. kornia for
# RandAugment: fetch them here first with --fetch-wheels), starts the budget clock, and keeps a log beside the
# results even if the command is cut off.
#
#   bash studies/gpu_study.sh                  # GPU machine; device tool: carry [".whl"] if you fetched wheels
#   bash studies/gpu_study.sh --smoke          # CPU check with tiny settings (OUT defaults to outputs/gpu_study)
#   bash studies/gpu_study.sh --fetch-wheels   # here, with PyPI: kornia + kornia_rs for the GPU's Python 3.12
#
# First (not with --smoke) bench_gpu.py's paper-scale step with the auxiliary's cost hidden two ways, capped at
# GPU_STUDY_AUX_S seconds (default 150; 0 skips it): $OUT/bench_aux.{txt,json}.
# Any other argument goes to studies/gpu_study.py (--help lists them). GPU_STUDY_LIMIT_S (default 560, from the
# wrapper's start) is a hard stop a little below the device tool's 600 s; the study's own --budget-s (480)
# plans inside it.
set -uo pipefail
cd "$(dirname "$0")/.."
export GPU_STUDY_T0
GPU_STUDY_T0=$(date +%s.%N)

if [ "${1:-}" = "--fetch-wheels" ]; then
    ex=$(git rev-parse --git-path info/exclude)  # .whl/ must stay untracked: the device tool carries it as ignored
    grep -qx '/.whl/' "$ex" 2>/dev/null || echo '/.whl/' >> "$ex"
    mkdir -p .whl
    for spec in "kornia==${KORNIA_VERSION:-0.9.0}" "kornia_rs==${KORNIA_RS_VERSION:-0.2.0}"; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$spec" || exit 1
    done
    ls -la .whl
    exit 0
fi

OUT=${OUT:-outputs/gpu_study}
mkdir -p "$OUT"
LOG=$OUT/gpu_study.log
PY=${PYTHON:-python3}
: > "$LOG"
if compgen -G ".whl/*.whl" > /dev/null; then
    echo "[gpu_study.sh] installing carried wheels: $(cd .whl && echo *.whl)" | tee -a "$LOG"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_study_site \
        .whl/*.whl 2>&1 | tail -3 | tee -a "$LOG"
    if [ "${PIPESTATUS[0]}" = 0 ]; then
        export PYTHONPATH=/tmp/gpu_study_site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "[gpu_study.sh] the carried wheels do not install for this Python; continuing without them" | tee -a "$LOG"
    fi
fi
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
export PYTHONUNBUFFERED=1
if [[ " $* " != *" --smoke "* ]] && [ "${GPU_STUDY_AUX_S:-150}" -gt 0 ]; then
    # Issue 18 first, capped: the paper-scale step (R50 8x8 + R50x1/4 16x4 at 224, bf16) with the auxiliary on a
    # second CUDA stream and torch.compile'd; each row is printed as it is measured. The study below plans its
    # runs in whatever is left of its budget (it counts from this wrapper's start).
    timeout -k 5 "${GPU_STUDY_AUX_S:-150}" "$PY" scripts/bench_gpu.py --preset k400-1pct-r50 --amp bf16 --steps 15 \
        --aux-variants aux_stream compile_aux --json "$OUT/bench_aux.json" 2>&1 | tee -a "$LOG" > "$OUT/bench_aux.txt"
    echo "[gpu_study.sh] aux bench exit ${PIPESTATUS[0]} after $(awk "BEGIN {printf \"%.0f\", $(date +%s.%N) - $GPU_STUDY_T0}") s" | tee -a "$LOG"
fi
left=$(awk "BEGIN {printf \"%d\", ${GPU_STUDY_LIMIT_S:-560} - ($(date +%s.%N) - $GPU_STUDY_T0)}")
timeout -k 10 "$left" "$PY" studies/gpu_study.py --out "$OUT" "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
echo "[gpu_study.sh] exit $rc after $(awk "BEGIN {printf \"%.0f\", $(date +%s.%N) - $GPU_STUDY_T0}") s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$rc"
