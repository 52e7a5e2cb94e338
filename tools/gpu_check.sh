#!/usr/bin/env bash
# The GPU check: tests/test_cuda.py, then tools/benchmark.py --config i128 (G_ch = D_ch = 96,
# batch 32) in modes fp32, compile+bf16+cl, bf16, bf16+cl and fp16, all in one results file:
# $OUT/gpu_check_results.txt when OUT is set, else ./gpu_check_results.txt. It fits in 8 minutes
# on one H200-class GPU: the tests get at most 4 minutes and the benchmark what is left (modes
# that do not fit are reported as stopped or skipped).
#
#   bash tools/gpu_check.sh             # on a CUDA machine
#   bash tools/gpu_check.sh --dry-run   # anywhere: the same steps on CPU, benchmark at toy size
#
# PYTHON picks the interpreter (default: python).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RESULTS=${OUT:+$OUT/}gpu_check_results.txt
BUDGET=470  # seconds for the whole check, a little under 8 minutes
start=$SECONDS

case "${1:-}" in
    --dry-run) BENCH=(--device cpu --ch 8 --batch_size 2 --warmup 1 --reps 1 --itrs 1
                      --modes fp32,bf16,bf16+cl,fp16) ;;
    '') BENCH=(--batch_size 32 --warmup 3 --reps 3 --itrs 5
               --modes fp32,compile+bf16+cl,bf16,bf16+cl,fp16) ;;
    *) echo "usage: bash tools/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

{
    echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null) ${1:-}"
    $PY -c "import torch; c = torch.cuda.is_available(); print('torch', torch.__version__, 'CUDA',
torch.version.cuda, 'device', torch.cuda.get_device_name(0) if c else 'none')"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    fi

    echo
    echo "## tests/test_cuda.py"
    timeout 240 $PY -m pytest -q -rs tests/test_cuda.py 2>&1 | tail -n 40
    echo "tests: exit status ${PIPESTATUS[0]} after $((SECONDS - start)) s"

    left=$((BUDGET - (SECONDS - start)))
    echo
    echo "## tools/benchmark.py --config i128 ${BENCH[*]} --budget $left"
    $PY tools/benchmark.py --config i128 "${BENCH[@]}" --budget "$left"
    echo "benchmark: exit status $?; total $((SECONDS - start)) s"
} 2>&1 | tee "$RESULTS"
echo "results in $RESULTS"
