"""Fused per-sequence linear cross-entropy, never holding the (T, V) logits: `sequence_nll`.

nll_sum[s] = sum over the tokens t of sequence s of lse_t - z_t[y_t], with z_t = weight @ hidden_t,
computed tile by tile so the (T, V) logits never exist (see kernels/chunked.py for the math and
kernels/triton_ce.py for the GPU kernels).

Tests:      python -m pytest -q test_kernels.py
Benchmarks: python bench/bench_kernels.py   (CPU)     bash bench/gpu.sh   (GPU)
"""
from kernels.chunked import IGNORE_INDEX, sequence_nll

__all__ = ["IGNORE_INDEX", "sequence_nll"]
