"""Per-sequence linear cross-entropy without materialising the (T, V) logits.

For token t with hidden state h_t, logits z_t = W h_t (V of them) and target y_t:

    forward:   nll_t = lse_t - z_t[y_t],    lse_t = log sum_v exp(z_t[v])
               nll_sum[s] = sum over tokens t of sequence s (targets == -100 are skipped)
    backward:  g_t = dL/dnll_sum[seq_t]                      (any upstream gradient, per sequence)
               dz_t = g_t * (softmax(z_t) - onehot(y_t))     (softmax(z_t) = exp(z_t - lse_t))
               dh_t = W^T dz_t,   dW = sum_t dz_t h_t^T

The (T, V) logits are cut into tiles of `chunk_size` tokens x `vocab_chunk` vocabulary rows, and
only one tile exists at a time. Forward keeps a running log-sum-exp and target logit per token
(T floats each) and merges every tile into them; besides its inputs it saves only the lse (T
floats), and under torch.no_grad (SSFT's cost grid) nothing. Backward recomputes each tile's logits
from (h, W) and the saved lse, so the per-sequence gradient g can be anything (SSFT and GFPO
weight sequences differently). The loops run vocabulary-outer, tokens-inner, so dW is accumulated
in fp32 one vocabulary block at a time and never needs a full (V, d) fp32 buffer; dh is
accumulated in fp32 across vocabulary blocks. Cost: one matmul more than the naive loss (the
recompute), for a peak of one tile instead of several (T, V) buffers.

Matmuls stay in torch (cuBLAS on GPU). The per-tile softmax work is done either by the torch ops
below (`impl="torch"`, the CPU default) or by the Triton kernels in kernels/triton_ce.py
(`impl="triton"`, the CUDA default); both plug into the same autograd Function.

Tests:      python -m pytest -q test_kernels.py
Benchmarks: python bench/bench_kernels.py   (CPU)     bash bench/gpu.sh   (GPU)
"""
import os
import sys

import torch

IGNORE_INDEX = -100


def default_tile(device):
    """(tokens, vocabulary rows) per tile of logits: the largest temporary, so the extra memory.

    GPU: 4096 x 16384 = 2^26 logits (128 MiB in bf16), big enough that cuBLAS runs at full speed
    and the per-tile Python overhead is negligible. CPU: 1024 x 16384 = 2^24 (64 MiB in fp32),
    because the torch ops make a few fp32 temporaries of tile size and CPU memory is scarcer.
    """
    return (4096, 16384) if device.type == "cuda" else (1024, 16384)


# ----------------------------------------------------------------------------------------------
# Per-tile ops, pure torch. kernels/triton_ce.py implements the same two functions in Triton.

def lse_update(z, targets, col0, lse, zy):
    """Merge one tile of logits into the running per-token lse and target logit, in place.

    z (C, Vt) logits of vocabulary rows [col0, col0 + Vt); targets (C,) global ids;
    lse (C,) fp32 running log-sum-exp (-inf before the first tile); zy (C,) fp32 target logit.
    """
    z32 = z.float()  # (C, Vt) fp32 accumulation whatever the input dtype
    lse.copy_(torch.logaddexp(lse, torch.logsumexp(z32, dim=1)))
    col = targets - col0  # (C,) target column inside this tile
    hit = (col >= 0) & (col < z.shape[1])  # ignored (-100) and other tiles' targets miss
    picked = z32.gather(1, col.clamp(0, z.shape[1] - 1)[:, None]).squeeze(1)  # (C,)
    zy.add_(torch.where(hit, picked, 0.0))


def grad_logits(z, targets, col0, lse, g):
    """dz = g * (softmax(z) - onehot(target)) for one tile, returned in z's dtype.

    z (C, Vt); targets (C,); lse (C,) fp32 from forward; g (C,) fp32 per-token upstream gradient
    (0 for ignored tokens). The true-class term is subtracted in fp32, before rounding to z's dtype,
    since p - 1 cancels catastrophically in bf16 as p -> 1.
    """
    dz = (z.float() - lse[:, None]).exp_()  # (C, Vt) fp32 softmax probabilities
    col = targets - col0
    hit = (col >= 0) & (col < z.shape[1])
    dz.scatter_add_(1, col.clamp(0, z.shape[1] - 1)[:, None], -hit.float()[:, None])  # p - onehot
    return dz.mul_(g[:, None]).to(z.dtype)


# ----------------------------------------------------------------------------------------------
# The autograd Function shared by both implementations.

def _mm_fp32(a, b):
    """a @ b as fp32. A bf16 GEMM accumulates in fp32 but rounds its output to bf16; the gradients
    sum one such output per tile, so they are kept in fp32 until the end instead."""
    if a.dtype == torch.float32:
        return a @ b
    if a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32)  # cuBLAS: bf16 inputs, fp32 output
    return a.float() @ b.float()  # no such CPU GEMM; bf16 products are exact in fp32 anyway


def _forward(hidden, weight, targets, seq_ids, num_seqs, ops, chunk_size, vocab_chunk):
    """Per-sequence NLL sums (num_seqs,) fp32 and the per-token lse (T,) fp32."""
    T, V = hidden.shape[0], weight.shape[0]
    lse = torch.full((T,), float("-inf"), dtype=torch.float32, device=hidden.device)  # (T,)
    zy = torch.zeros(T, dtype=torch.float32, device=hidden.device)  # (T,) target logits
    for v0 in range(0, V, vocab_chunk):  # vocabulary-outer, tokens-inner, like backward
        w = weight[v0:v0 + vocab_chunk]  # (Vt, d)
        for t0 in range(0, T, chunk_size):
            t1 = t0 + chunk_size
            z = hidden[t0:t1] @ w.T  # (C, Vt) in the input dtype
            ops.lse_update(z, targets[t0:t1], v0, lse[t0:t1], zy[t0:t1])
    nll = torch.where(targets != IGNORE_INDEX, lse - zy, 0.0)  # (T,) fp32
    nll_sum = torch.zeros(num_seqs, dtype=torch.float32, device=hidden.device)
    return nll_sum.index_add_(0, seq_ids, nll), lse


class _SequenceNLL(torch.autograd.Function):

    @staticmethod
    def forward(ctx, hidden, weight, targets, seq_ids, num_seqs, ops, chunk_size, vocab_chunk):
        nll_sum, lse = _forward(hidden, weight, targets, seq_ids, num_seqs, ops, chunk_size,
                                vocab_chunk)
        ctx.save_for_backward(hidden, weight, targets, seq_ids, lse)
        ctx.ops, ctx.chunk_size, ctx.vocab_chunk = ops, chunk_size, vocab_chunk
        return nll_sum

    @staticmethod
    def backward(ctx, grad_nll_sum):
        hidden, weight, targets, seq_ids, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[:2]
        T, V = hidden.shape[0], weight.shape[0]
        # each token gets its own sequence's upstream gradient; ignored tokens get none
        g = torch.where(targets != IGNORE_INDEX, grad_nll_sum.float()[seq_ids], 0.0)  # (T,)
        f32 = dict(dtype=torch.float32, device=hidden.device)
        dh = torch.zeros(hidden.shape, **f32) if need_h else None  # (T, d) fp32 accumulator
        dW = torch.empty_like(weight) if need_w else None  # (V, d), every block written below
        for v0 in range(0, V, ctx.vocab_chunk):
            w = weight[v0:v0 + ctx.vocab_chunk]  # (Vt, d)
            dw = torch.zeros(w.shape, **f32) if need_w else None  # (Vt, d) fp32 accumulator
            for t0 in range(0, T, ctx.chunk_size):
                t1 = t0 + ctx.chunk_size
                h = hidden[t0:t1]  # (C, d)
                # logits recomputed (h @ w.T), turned into dz: (C, Vt) in the input dtype
                dz = ctx.ops.grad_logits(h @ w.T, targets[t0:t1], v0, lse[t0:t1], g[t0:t1])
                if need_h:
                    dh[t0:t1] += _mm_fp32(dz, w)  # (C, d), fp32 sum over vocabulary blocks
                if need_w:
                    dw += _mm_fp32(dz.T, h)  # (Vt, d), fp32 sum over token chunks
            if need_w:
                dW[v0:v0 + ctx.vocab_chunk] = dw
        dh = dh.to(hidden.dtype) if need_h else None
        return dh, dW, None, None, None, None, None, None


def _ops(impl, device):
    if impl == "auto":
        impl = "triton" if device.type == "cuda" else "torch"
    if impl == "torch":
        return sys.modules[__name__]  # lse_update and grad_logits above
    if impl == "triton":
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("impl='triton' on CPU tensors needs TRITON_INTERPRET=1")
        from kernels import triton_ce  # imported late: TRITON_INTERPRET must be set first
        return triton_ce
    raise ValueError(f"impl must be 'auto', 'torch' or 'triton', got {impl!r}")


def sequence_nll(hidden, weight, targets, seq_ids, num_seqs, impl="auto", chunk_size=None,
                 vocab_chunk=None):
    """Per-sequence sums of next-token NLL under logits = hidden @ weight.T.

    hidden (T, d) fp32 or bf16; weight (V, d), the lm_head; targets (T,) int64, -100 = ignored;
    seq_ids (T,) int64 in [0, num_seqs). Returns nll_sum (num_seqs,) fp32, differentiable w.r.t.
    hidden and weight, and n_tokens (num_seqs,) int64, the count of non-ignored tokens. impl:
    "torch", "triton", or "auto" (triton for CUDA tensors). chunk_size x vocab_chunk is the tile
    of logits held at once (defaults: see default_tile). Under torch.no_grad nothing is saved.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"need hidden (T, d) and weight (V, d), got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden is {hidden.dtype} but weight is {weight.dtype}")
    if targets.shape != hidden.shape[:1] or seq_ids.shape != hidden.shape[:1]:
        raise ValueError("targets and seq_ids must have shape (T,) matching hidden")
    V = weight.shape[0]
    bad = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= V))
    if bad.any():  # one host sync; a wrong target would otherwise silently give z_y = 0
        raise ValueError(f"targets must be -100 or in [0, {V})")
    default_c, default_v = default_tile(hidden.device)
    chunk_size, vocab_chunk = chunk_size or default_c, vocab_chunk or default_v
    ops = _ops(impl, hidden.device)
    targets, seq_ids = targets.long(), seq_ids.long()
    keep = targets != IGNORE_INDEX
    n_tokens = torch.zeros(num_seqs, dtype=torch.int64, device=hidden.device)
    n_tokens.index_add_(0, seq_ids, keep.long())
    if not keep.all():
        # Ignored tokens (prompts, padding) take no loss: leave them out of every matmul. One is
        # kept if none remains, so that backward still runs (FSDP's hooks wait for it).
        idx = keep.nonzero().squeeze(1) if keep.any() else torch.zeros(1, dtype=torch.long, device=keep.device)
        hidden, targets, seq_ids = hidden[idx], targets[idx], seq_ids[idx]
    # tiles are row slices, and the Triton kernels index raw pointers: make the layouts plain
    hidden, weight = hidden.contiguous(), weight.contiguous()
    targets, seq_ids = targets.contiguous(), seq_ids.contiguous()
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        nll_sum = _SequenceNLL.apply(hidden, weight, targets, seq_ids, num_seqs, ops, chunk_size,
                                     vocab_chunk)
    else:  # forward only (e.g. SSFT's cost grid): no autograd node, nothing saved
        nll_sum, _ = _forward(hidden, weight, targets, seq_ids, num_seqs, ops, chunk_size,
                              vocab_chunk)
    return nll_sum, n_tokens
