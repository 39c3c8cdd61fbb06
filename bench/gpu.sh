#!/usr/bin/env bash
# The project's single GPU script: every check that needs a CUDA GPU, in one command.
#
#   bash bench/gpu.sh                  # from anywhere; results go to $OUT (default bench/out)
#
# Needs a CUDA build of torch and triton (pip install -r requirements.txt on the GPU machine).
# Each check is one `check` line and writes its results under $OUT; a failing check is reported
# and the script goes on, exiting non-zero at the end. To add a check, append a section below.
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
failed=()
check() {  # check NAME COMMAND...: run COMMAND, remember NAME if it fails
    local name=$1; shift
    echo "=== $name: $*"
    local t0=$SECONDS
    "$@" || failed+=("$name")
    echo "=== $name: $((SECONDS - t0)) s"
}
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'
print(torch.cuda.get_device_name(), 'torch', torch.__version__)" || exit 1

# --- kernels/: fused per-sequence linear cross-entropy (about 2 minutes)
check kernels-bench "$PYTHON" bench/gpu_kernels.py --out "$OUT/gpu_kernels.json"
check kernels-tests "$PYTHON" -m pytest -q test_kernels.py --junitxml "$OUT/test_kernels.xml"

# --- the whole suite on the GPU (the CPU-only parts run too), then a short SSFT run on the GPU path
#     (bf16 autocast, Triton loss, KV-cache evaluation): about 2 minutes
check tests "$PYTHON" -m pytest -q --junitxml "$OUT/tests.xml"
check ssft-gpu "$PYTHON" ssft.py --steps 100 --out "$OUT/ssft_gpu" --overwrite

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all GPU checks passed; results in $OUT"
