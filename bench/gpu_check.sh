#!/usr/bin/env bash
# The one prepared device check (issue 14): run once on a CUDA machine that has torch and triton
# preinstalled and no network, in at most 9 minutes including compilation (the device call's
# limit is 10 minutes and the session's device time 15, start included).
#
#   bash bench/gpu_check.sh OUTDIR            # on the GPU machine
#   bash bench/gpu_check.sh OUTDIR --dry-run  # anywhere: checks the script's steps, runs nothing on CUDA
#
# Steps, each under a time limit taken from what is left of the budget (GPU_CHECK_BUDGET_S, 540):
#   1. environment (nvidia-smi, torch/triton versions) and an offline editable install
#      (pip install --no-build-isolation --no-deps -e .: builds fastmde._C with the local compiler);
#   2. the CUDA tests at realistic shapes (tests/*: test_cuda_*, skipped without a GPU elsewhere),
#      then the hot paths' contract modules with the Triton backend on CUDA (every check of
#      tests/test_{depth_loss,depth_metrics,up_projection,scale_invariant_loss}.py, -k triton:
#      values, gradients, dtypes, layouts, opcheck, compile): the first real test of the GPU half;
#   3. python bench/run.py --device cuda --only kernels,train (the quick rows; then --full kernel
#      rows while time remains): bench/results/cuda-<gpu>-quick.md/.json and cuda-<gpu>.md/.json,
#      written to OUTDIR and copied to bench/results/;
#   4. a summary of what ran, what failed and what was cut by the time limit, in OUTDIR/summary.txt.
# Triton's cache is OUTDIR/triton-cache unless TRITON_CACHE_DIR is set (point it at a cache
# compiled for sm_90 with the same triton version to spend no device minutes compiling).
# The log of everything is OUTDIR/gpu_check.log. Exit status: 0 when every step passed.
set -uo pipefail

usage() { echo "usage: bash bench/gpu_check.sh OUTDIR [--dry-run]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
OUT=$1
DRY=0
if [[ $# -ge 2 ]]; then
    [[ $2 == --dry-run ]] || usage
    DRY=1
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.txt"
: > "$LOG"
: > "$SUMMARY"
exec > >(tee -a "$LOG") 2>&1
cd "$ROOT"

PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-540}
START=$SECONDS
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$OUT/triton-cache}
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
FAILED=0
CONTRACTS=$(ls tests/test_depth_loss.py tests/test_depth_metrics.py tests/test_up_projection.py tests/test_scale_invariant_loss.py 2>/dev/null | tr '\n' ' ')

left() { echo $((BUDGET - (SECONDS - START))); }
note() { echo "$*" | tee -a "$SUMMARY"; }
# run NAME MAX_SECONDS CMD...: run under min(MAX_SECONDS, what is left minus a reserve), record the outcome
run() {
    local name=$1 cap=$2; shift 2
    local limit
    limit=$(( $(left) - 20 ))
    (( limit > cap )) && limit=$cap
    echo "== [$(date -u +%H:%M:%S)] $name (limit ${limit}s): $*"
    if (( limit < 10 )); then
        note "SKIPPED  $name: no time left"
        return 0
    fi
    local t0=$SECONDS rc=0
    timeout --signal=TERM --kill-after=10 "$limit" "$@" || rc=$?
    local took=$((SECONDS - t0))
    if (( rc == 0 )); then
        note "PASSED   $name (${took}s)"
    elif (( rc == 124 || rc == 137 )); then
        note "TIMEOUT  $name (cut at ${limit}s)"
        FAILED=1
    else
        note "FAILED   $name (exit $rc, ${took}s)"
        FAILED=1
    fi
    return 0
}

note "gpu_check $(date -u '+%Y-%m-%d %H:%M UTC') at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), budget ${BUDGET}s, dry run: $DRY"

if (( DRY )); then
    # Everything that does not need a GPU: the tools, the selection of tests, the entry points.
    run "script syntax" 10 bash -n "$ROOT/bench/gpu_check.sh"
    run "install (pip --dry-run)" 120 "$PY" -m pip install -q --dry-run --no-build-isolation --no-deps -e .
    run "select CUDA tests" 120 "$PY" -m pytest -q --collect-only -k test_cuda_ tests/
    run "bench entry point" 60 "$PY" bench/run.py --help
    run "select the contract tests (-k triton)" 120 "$PY" -m pytest -q --collect-only -k triton $CONTRACTS
    echo "== would run: $PY -m pytest -q -rs -k test_cuda_ tests/"
    echo "== would run: $PY -m pytest -q -rs -x -k triton $CONTRACTS"
    echo "== would run: $PY bench/run.py --device cuda --only kernels,train --out-dir $OUT"
    echo "== would run: $PY bench/run.py --device cuda --full --only kernels --out-dir $OUT"
else
    run "environment" 60 bash -c "nvidia-smi && $PY -c 'import torch, triton; print(\"torch\", torch.__version__, \"triton\", triton.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0))'"
    if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        note "FAILED   no CUDA device visible to torch: nothing else can run"
        exit 1
    fi
    run "install (offline, editable)" 150 "$PY" -m pip install -q --no-build-isolation --no-deps -e .
    run "CUDA tests at realistic shapes" 170 "$PY" -m pytest -q -rs -k test_cuda_ tests/ --junitxml="$OUT/cuda-tests.xml"
    run "hot-path contracts on the Triton backend (CUDA)" 200 "$PY" -m pytest -q -rs -k triton $CONTRACTS --junitxml="$OUT/contract-tests.xml"
    run "bench kernels + train step (quick rows)" 240 "$PY" bench/run.py --device cuda --only kernels,train --out-dir "$OUT"
    run "bench kernels (--full rows, while time remains)" 600 "$PY" bench/run.py --device cuda --full --only kernels --out-dir "$OUT"
    # the measured tables (cuda-<gpu>-quick.* and cuda-<gpu>.*) become the published numbers for this GPU
    for f in "$OUT"/cuda-*.md "$OUT"/cuda-*.json; do
        [[ -e $f ]] && cp "$f" "$ROOT/bench/results/" && echo "copied $(basename "$f") to bench/results/"
    done
fi

note "total $((SECONDS - START))s of ${BUDGET}s; log: $LOG"
exit $FAILED
