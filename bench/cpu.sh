#!/usr/bin/env bash
# Every CPU benchmark, one after the other (about 20 minutes on 2 cores, 7 of them the SSFT step at
# the paper's shapes; run it on an idle machine), each writing JSON under $OUT (default bench/out).
# The README's benchmark table comes from these.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
"$PYTHON" bench/bench_generate.py --json "$OUT/cpu_generate.json"
"$PYTHON" bench/bench_ssft_step.py --shape demo --repeats 5 --json "$OUT/cpu_ssft_step.json"
"$PYTHON" bench/bench_ssft_step.py --shape paper --repeats 2 --json "$OUT/cpu_ssft_step_paper.json"
"$PYTHON" bench/bench_load.py --json "$OUT/cpu_load.json"
"$PYTHON" bench/bench_hungarian.py --json "$OUT/cpu_hungarian.json"
"$PYTHON" bench/bench_kernels.py --json "$OUT/cpu_kernels.json"
"$PYTHON" bench/bench_rewards.py --json "$OUT/cpu_rewards.json"
# GFPO's update against GRPO's on the same rollouts: needs an SSFT model (`python ssft.py` writes out/ssft)
"$PYTHON" bench/bench_gfpo.py --model "${SSFT_MODEL:-out/ssft}" --json "$OUT/cpu_gfpo.json"
