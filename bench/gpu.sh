#!/usr/bin/env bash
# The project's single GPU script: every check that needs a CUDA GPU, in one command, in at most
# 8 minutes (each check has its own time limit; the limits and the kill grace add up to 475 s),
# plus 4 minutes for the vLLM checks where vLLM is installed.
#
#   bash bench/gpu.sh                  # from anywhere; results go to $OUT (default bench/out)
#
# Needs a CUDA build of torch and triton (pip install -r requirements.txt on the GPU machine); it
# stops at once, exit 1, without one. Each check is one `check` line and writes its results under
# $OUT; a failing or timed-out check is reported and the script goes on, exiting non-zero at the
# end. To add a check, append a section below and take its seconds from another's budget.
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
failed=()
start=$SECONDS
check() {  # check NAME SECONDS COMMAND...: run COMMAND for at most SECONDS, remember NAME if it fails
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit} s): $*"
    local t0=$SECONDS rc=0
    timeout --signal=INT --kill-after=5 "$limit" "$@" || rc=$?
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        echo "=== $name: TIMED OUT after ${limit} s"
        failed+=("$name (timed out)")
    elif [ $rc -ne 0 ]; then
        failed+=("$name")
    fi
    echo "=== $name: $((SECONDS - t0)) s"
}
"$PYTHON" -c "import sys, torch
if not torch.cuda.is_available():
    sys.exit('error: no CUDA GPU visible to torch ' + torch.__version__ + ' (bench/gpu.sh needs one; the CPU benchmarks are bench/cpu.sh)')
print(torch.cuda.get_device_name(), 'torch', torch.__version__)" || exit 1

# --- kernels/: the fused per-sequence linear cross-entropy against naive, T in {8k, 32k} tokens
check kernels-bench 80 "$PYTHON" bench/gpu_kernels.py --out "$OUT/gpu_kernels.json"
check kernels-tests 45 "$PYTHON" -m pytest -q test_kernels.py --junitxml "$OUT/test_kernels.xml"

# --- training throughput and MFU of random Qwen2.5-0.5B and -1.5B, bf16, 8k-token micro-batches
check train-throughput 60 "$PYTHON" bench/gpu_train.py --out "$OUT/gpu_train.json"

# --- the SSFT / mixed step ratio at the paper's shapes (N 6, M 4, L 1000, ~8k-token traces), 0.5B
check ssft-step-ratio 50 "$PYTHON" bench/bench_ssft_step.py --shape paper --device cuda --model qwen2.5-0.5b \
    --repeats 2 --json "$OUT/gpu_ssft_step.json"

# --- the suites of the training code on the GPU path (one-rank NCCL group, bf16, Triton loss), then
#     a short SSFT run end to end (training, export, KV-cache evaluation), and GFPO on it
#     (rollouts with the weights gathered once, the update at the forking token)
check tests 85 "$PYTHON" -m pytest -q -x test_model.py test_ssft.py test_gfpo.py --junitxml "$OUT/tests.xml"
check ssft-gpu 50 "$PYTHON" ssft.py --steps 100 --out "$OUT/ssft_gpu" --overwrite
check gfpo-gpu 30 "$PYTHON" gfpo.py --model "$OUT/ssft_gpu" --steps 10 --out "$OUT/gfpo_gpu" --overwrite

# --- --cpu-offload: the sharded state in pinned host memory, against the plan (test_plan.py)
check cpu-offload 35 "$PYTHON" -m pytest -q -s test_plan.py -k offload --junitxml "$OUT/test_offload.xml"

# --- GFPO's rollouts on vLLM, where it is installed (pip install -r requirements-vllm.txt; not counted
#     in the 8 minutes): the synced weights, the policy and the throughput against the local engine,
#     then a few GFPO steps end to end
if "$PYTHON" -c "import vllm" 2>/dev/null; then
    check vllm-engine 150 "$PYTHON" bench/gpu_vllm.py --model "$OUT/ssft_gpu" --out "$OUT/gpu_vllm.json"
    check gfpo-vllm 90 "$PYTHON" gfpo.py --model "$OUT/ssft_gpu" --steps 5 --rollouts vllm --out "$OUT/gfpo_vllm" \
        --overwrite
else
    echo "=== vllm-engine, gfpo-vllm: skipped (vLLM is not installed: pip install -r requirements-vllm.txt)"
fi

echo "total: $((SECONDS - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all GPU checks passed; results in $OUT"
