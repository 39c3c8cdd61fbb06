"""Triton kernels for one tile of logits: the softmax half of the linear cross-entropy.

kernels/chunked.py cuts the (T, V) logits into tiles z = h[t0:t1] @ W[v0:v1].T (cuBLAS) and calls
the two functions here, which replace its pure-torch ops of the same names:

    lse_update:   per row, an online softmax over BLOCK_V-wide vocabulary blocks
                  (Milakov & Gimelshein 2018): running max m and sum s = sum exp(z - m), so
                  lse_tile = m + log s; then lse <- logaddexp(lse, lse_tile) merges the tile into
                  the running per-token lse, and the target logit z[y] is added if y is in the tile.
    grad_logits:  dz = g * (exp(z - lse) - onehot(y)), written over z in place (no second tile).

All arithmetic is fp32 whatever the input dtype (bf16 is upcast on load and rounded once on store);
the true-class term p - 1 is formed in fp32 before rounding, since it cancels as p -> 1. Row
offsets are int64 because rows * V overflows int32 at long sequence lengths.

On a machine without a GPU these run under the Triton interpreter: TRITON_INTERPRET=1 must be set
before this module is imported (conftest.py does it for pytest).

Tests:     python -m pytest -q test_kernels.py
Benchmark: bash bench/gpu.sh
"""
import triton
import triton.language as tl

# Tile shape per program: BLOCK_T rows x BLOCK_V vocabulary entries (8192 fp32 values spread over
# 8 warps). Module-level so tests can shrink BLOCK_V to get several vocabulary blocks per tile.
BLOCK_T = 8
BLOCK_V = 1024
NUM_WARPS = 8


@triton.jit
def _lse_update_kernel(z_ptr, stride_z, tgt_ptr, lse_ptr, zy_ptr, n_rows, n_cols, col0,
                       BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # (BT,)
    row_ok = rows < n_rows
    # out-of-range rows read the last row (stores are masked) so no row is all -inf, which would
    # turn the online-softmax rescale exp(m - m_new) into exp(-inf + inf) = nan
    rows_ld = tl.minimum(rows, n_rows - 1)
    col_y = tl.load(tgt_ptr + rows_ld) - col0  # (BT,) target column in this tile
    col_y = tl.where((col_y >= 0) & (col_y < n_cols), col_y, -1)  # -1: target not in this tile
    m = tl.full([BLOCK_T], float("-inf"), tl.float32)  # running max
    s = tl.zeros([BLOCK_T], tl.float32)  # running sum of exp(z - m)
    zy = tl.zeros([BLOCK_T], tl.float32)  # target logit (0 unless in this tile)
    for v0 in range(0, n_cols, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)  # (BV,)
        ptrs = z_ptr + rows_ld[:, None] * stride_z + cols[None, :]
        x = tl.load(ptrs, mask=cols[None, :] < n_cols, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=1))  # finite: every block has a valid column
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), axis=1)
        m = m_new
        zy += tl.sum(tl.where(cols[None, :] == col_y[:, None], x, 0.0), axis=1)
    lse_tile = m + tl.log(s)
    lse_prev = tl.load(lse_ptr + rows_ld)  # -inf before the first tile
    top = tl.maximum(lse_prev, lse_tile)
    lse = top + tl.log(tl.exp(lse_prev - top) + tl.exp(lse_tile - top))
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(zy_ptr + rows, tl.load(zy_ptr + rows_ld) + zy, mask=row_ok)


@triton.jit
def _grad_logits_kernel(z_ptr, stride_z, tgt_ptr, lse_ptr, g_ptr, n_rows, n_cols, col0,
                        BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # (BT,)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)  # (BV,)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols[None, :] < n_cols)
    col_y = tl.load(tgt_ptr + rows, mask=row_ok, other=-1) - col0  # ignored (-100) never matches
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + rows, mask=row_ok, other=0.0)
    ptrs = z_ptr + rows[:, None] * stride_z + cols[None, :]
    x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    p = tl.exp(x - lse[:, None])  # softmax from the saved lse, fp32
    onehot = tl.where(cols[None, :] == col_y[:, None], 1.0, 0.0)
    dz = (p - onehot) * g[:, None]
    tl.store(ptrs, dz.to(z_ptr.dtype.element_ty), mask=mask)


def lse_update(z, targets, col0, lse, zy):
    """Same contract as kernels.chunked.lse_update: z (C, Vt) tile of vocabulary rows
    [col0, col0 + Vt); targets (C,) int64; lse, zy (C,) fp32 contiguous, updated in place."""
    C, Vt = z.shape
    if C == 0:
        return
    grid = (triton.cdiv(C, BLOCK_T),)
    _lse_update_kernel[grid](z, z.stride(0), targets, lse, zy, C, Vt, col0,
                             BLOCK_T=BLOCK_T, BLOCK_V=BLOCK_V, num_warps=NUM_WARPS)


def grad_logits(z, targets, col0, lse, g):
    """Same contract as kernels.chunked.grad_logits; overwrites z with dz and returns it."""
    C, Vt = z.shape
    if C == 0:
        return z
    grid = (triton.cdiv(C, BLOCK_T), triton.cdiv(Vt, BLOCK_V))
    _grad_logits_kernel[grid](z, z.stride(0), targets, lse, g, C, Vt, col0,
                              BLOCK_T=BLOCK_T, BLOCK_V=BLOCK_V, num_warps=NUM_WARPS)
    return z
