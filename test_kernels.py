"""Tests for kernels.sequence_nll against a naive float64 reference.

The reference materialises the full logits in float64, takes log_softmax, gathers the targets,
sums per sequence with index_add, and gets gradients from autograd. Both implementations are
checked: impl="torch" on CPU, and impl="triton" on CUDA or, without a GPU, under the Triton
interpreter (conftest.py sets TRITON_INTERPRET=1), with shapes small enough for the interpreter.

    python -m pytest -q test_kernels.py
"""
import pytest
import torch
import torch.nn.functional as F

import kernels.triton_ce as triton_ce
from kernels import IGNORE_INDEX, sequence_nll
from kernels.chunked import grad_logits as torch_grad_logits

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
IMPLS = ["torch", "triton"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def small_triton_blocks(monkeypatch):
    # several vocabulary blocks per tile, so the online softmax really merges blocks
    monkeypatch.setattr(triton_ce, "BLOCK_V", 128)


def make_case(T=37, V=1000, d=24, num_seqs=7, seed=0, dtype=torch.float32, device=DEVICE):
    """Odd shapes; sequence 2 fully ignored, sequences 5 and 6 absent (num_seqs > present)."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, d, generator=gen)
    weight = torch.randn(V, d, generator=gen) * (6 / d) ** 0.5  # logits of std ~2.5 for any d
    seq_ids = torch.randint(0, 5, (T,), generator=gen).sort().values
    targets = torch.randint(0, V, (T,), generator=gen)
    targets[torch.randperm(T, generator=gen)[:T // 4]] = IGNORE_INDEX
    targets[seq_ids == 2] = IGNORE_INDEX
    # targets on tile (300: not a multiple of the block) and Triton block (128) boundaries
    edge = torch.tensor([0, 127, 128, 299, 300, 383, 384, 599, 600, V - 1])
    edge = edge[edge < V][:T]
    targets[:len(edge)] = edge
    grad = torch.rand(num_seqs, generator=gen) + 0.5  # non-uniform upstream gradient
    to = dict(device=device)
    return (hidden.to(dtype=dtype, **to), weight.to(dtype=dtype, **to), targets.to(**to),
            seq_ids.to(**to), num_seqs, grad.to(**to))


def naive(hidden, weight, targets, seq_ids, num_seqs, grad):
    """Full logits in hidden's dtype, per-sequence sums in fp32 (fp64 for fp64 inputs):
    (nll_sum, d_hidden, d_weight)."""
    h = hidden.detach().requires_grad_()
    w = weight.detach().requires_grad_()
    nll = F.cross_entropy(h @ w.T, targets, ignore_index=IGNORE_INDEX, reduction="none")
    sum_dtype = torch.float64 if nll.dtype == torch.float64 else torch.float32  # fair to bf16
    nll_sum = torch.zeros(num_seqs, dtype=sum_dtype, device=nll.device)
    nll_sum = nll_sum.index_add(0, seq_ids, nll.to(sum_dtype))  # (num_seqs,)
    (nll_sum * grad.to(sum_dtype)).sum().backward()
    return nll_sum.detach(), h.grad, w.grad


def reference(hidden, weight, targets, seq_ids, num_seqs, grad):
    return naive(hidden.double(), weight.double(), targets, seq_ids, num_seqs, grad.double())


def run(hidden, weight, targets, seq_ids, num_seqs, grad, **kw):
    """sequence_nll forward + backward with upstream gradient `grad`."""
    h = hidden.detach().requires_grad_()
    w = weight.detach().requires_grad_()
    nll_sum, n_tokens = sequence_nll(h, w, targets, seq_ids, num_seqs, **kw)
    (nll_sum * grad).sum().backward()
    return nll_sum.detach(), n_tokens, h.grad, w.grad


def assert_close_fp32(actual, expected):
    """1e-5 relative, with an absolute floor far below the size of the entries being compared."""
    atol = 1e-6 * expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("tile", [(16, 300), (None, None)], ids=["tiled", "default"])
def test_matches_fp64_reference(impl, tile):
    case = make_case()
    hidden, weight, targets, seq_ids, num_seqs, grad = case
    ref_sum, ref_dh, ref_dw = reference(*case)
    nll_sum, n_tokens, dh, dw = run(*case, impl=impl, chunk_size=tile[0], vocab_chunk=tile[1])
    assert nll_sum.dtype == torch.float32 and n_tokens.dtype == torch.int64
    assert dh.dtype == hidden.dtype and dw.dtype == weight.dtype
    expected_n = torch.zeros(num_seqs, dtype=torch.int64, device=DEVICE)
    expected_n.index_add_(0, seq_ids, (targets != IGNORE_INDEX).long())
    assert torch.equal(n_tokens, expected_n)
    assert n_tokens[2] == 0 and n_tokens[5] == 0 and nll_sum[2] == 0 and nll_sum[5] == 0
    assert_close_fp32(nll_sum, ref_sum)
    assert_close_fp32(dh, ref_dh)
    assert_close_fp32(dw, ref_dw)


def test_reference_is_sensitive_to_upstream_gradient():
    # an implementation assuming a uniform upstream gradient would miss the tolerance by far
    case = make_case()
    _, dh, dw = reference(*case)
    _, dh_uniform, dw_uniform = reference(*case[:-1], torch.full_like(case[-1], case[-1].mean()))
    for g, g_uniform in [(dh, dh_uniform), (dw, dw_uniform)]:
        assert (g - g_uniform).abs().max() > 1e3 * 1e-5 * g.abs().max()


@pytest.mark.parametrize("impl", IMPLS)
def test_partial_requires_grad(impl):
    # frozen lm_head (only hidden needs a gradient) and frozen trunk (only the weight)
    hidden, weight, targets, seq_ids, num_seqs, grad = make_case(seed=1)
    _, ref_dh, ref_dw = reference(hidden, weight, targets, seq_ids, num_seqs, grad)
    kw = dict(impl=impl, chunk_size=16, vocab_chunk=300)
    h = hidden.clone().requires_grad_()
    (sequence_nll(h, weight, targets, seq_ids, num_seqs, **kw)[0] * grad).sum().backward()
    assert_close_fp32(h.grad, ref_dh)
    w = weight.clone().requires_grad_()
    (sequence_nll(hidden, w, targets, seq_ids, num_seqs, **kw)[0] * grad).sum().backward()
    assert_close_fp32(w.grad, ref_dw)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_grad_forward_only(impl, monkeypatch):
    case = make_case(seed=2)
    hidden, weight, targets, seq_ids, num_seqs, grad = case
    ref_sum, _, _ = reference(*case)

    def no_backward(*args):
        raise AssertionError("backward work under no_grad")
    monkeypatch.setattr(triton_ce, "grad_logits", no_backward)
    monkeypatch.setattr("kernels.chunked.grad_logits", no_backward)
    with torch.no_grad():
        nll_sum, _ = sequence_nll(hidden.requires_grad_(), weight.requires_grad_(), targets,
                                  seq_ids, num_seqs, impl=impl, chunk_size=16, vocab_chunk=300)
    assert nll_sum.grad_fn is None and not nll_sum.requires_grad
    assert_close_fp32(nll_sum, ref_sum)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_input(impl):
    # T = 0: zero sums, zero counts, and zero (not uninitialised) gradients
    hidden, weight, targets, seq_ids, num_seqs, grad = make_case(T=0, num_seqs=3)
    nll_sum, n_tokens, dh, dw = run(hidden, weight, targets, seq_ids, num_seqs, grad, impl=impl)
    assert nll_sum.tolist() == [0.0] * 3 and n_tokens.tolist() == [0] * 3
    assert dh.shape == (0, 24) and torch.equal(dw, torch.zeros_like(dw))


def assert_no_worse_than_naive(ours, naive_same_dtype, truth, ulp):
    """CCE's criterion: |ours - truth| <= |naive - truth| + tol elementwise, truth in fp64 on the
    same inputs. tol: 1 ulp (the interpreter's bf16 casts truncate) plus a floor, because a
    gradient entry that is a cancelling sum of rounded terms can be a few ulps off in either
    implementation; the error norm must also be no worse than naive's (+10%)."""
    for name, o, n, t in zip(["nll_sum", "d_hidden", "d_weight"], ours, naive_same_dtype, truth):
        err, err_naive = (o.double() - t).abs(), (n.double() - t).abs()
        tol = ulp * t.abs() + 5e-3 * t.abs().max()
        assert (err <= err_naive + tol).all(), name
        assert err.norm() <= 1.1 * err_naive.norm() + 1e-6 * t.norm(), name


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_no_worse_than_naive_bf16(impl):
    case = make_case(seed=3, dtype=torch.bfloat16)
    nll_sum, _, dh, dw = run(*case, impl=impl, chunk_size=4, vocab_chunk=300)  # 10 token chunks
    assert_no_worse_than_naive((nll_sum, dh, dw), naive(*case), reference(*case), ulp=2 ** -7)


@pytest.mark.parametrize("tile", [(8, 256), (1024, 4)], ids=["128-token-chunks", "64-vocab-blocks"])
def test_bf16_gradients_accumulate_in_fp32(tile):
    # summing 64-128 partial products in bf16 makes dW (token chunks) or dh (vocabulary blocks)
    # 2.5-4x less accurate than naive bf16; the fp32 accumulators keep them as accurate.
    # The accumulation is shared by both impls, so the fast torch one is enough here.
    case = make_case(T=1024, V=256, d=16, seed=4, dtype=torch.bfloat16)
    truth, naive_bf16 = reference(*case), naive(*case)
    ours = run(*case, impl="torch", chunk_size=tile[0], vocab_chunk=tile[1])
    for name, o, n, t in zip(["d_hidden", "d_weight"], ours[2:], naive_bf16[1:], truth[1:]):
        assert (o.double() - t).norm() <= 1.1 * (n.double() - t).norm(), name


@pytest.mark.parametrize("impl", IMPLS)
def test_true_class_gradient_in_bf16_has_no_cancellation(impl):
    # the target holds ~99.9% of the probability, so dz_y = g (p_y - 1) is ~1000x smaller than
    # p_y; forming p_y - 1 after rounding p_y to bf16 would lose it entirely (Liger #1329)
    C, Vt = 8, 300
    z = torch.zeros(C, Vt, dtype=torch.float64)
    targets = torch.arange(C) * 37
    z[torch.arange(C), targets] = 12.6 + 0.01 * torch.arange(C, dtype=torch.float64)  # p_y ~ 0.999
    z = z.to(torch.bfloat16).double()  # exactly representable: ops and truth see the same logits
    lse = torch.logsumexp(z, 1)
    g = torch.rand(C, dtype=torch.float64) + 0.5
    truth = (z - lse[:, None]).exp() * g[:, None]
    truth[torch.arange(C), targets] -= g
    op = triton_ce.grad_logits if impl == "triton" else torch_grad_logits
    dz = op(z.to(DEVICE, torch.bfloat16), targets.to(DEVICE), 0, lse.float().to(DEVICE),
            g.float().to(DEVICE))
    dz_y, truth_y = dz.cpu().double()[torch.arange(C), targets], truth[torch.arange(C), targets]
    torch.testing.assert_close(dz_y, truth_y, rtol=2 ** -7, atol=0)


def test_auto_picks_torch_on_cpu(monkeypatch):
    def fail(*args):
        raise AssertionError("Triton kernel called")
    monkeypatch.setattr(triton_ce, "lse_update", fail)
    sequence_nll(*make_case(device="cpu")[:5], impl="auto")
    with pytest.raises(AssertionError, match="Triton kernel called"):  # the spy works
        sequence_nll(*make_case()[:5], impl="triton")


def test_rejects_bad_input():
    hidden, weight, targets, seq_ids, num_seqs, _ = make_case(device="cpu")
    bad = targets.clone()
    bad[5] = weight.shape[0]
    with pytest.raises(ValueError, match="targets"):
        sequence_nll(hidden, weight, bad, seq_ids, num_seqs)
    with pytest.raises(ValueError, match="impl"):
        sequence_nll(hidden, weight, targets, seq_ids, num_seqs, impl="cuda")
    with pytest.raises(ValueError, match="hidden"):
        sequence_nll(hidden, weight[:, 1:], targets, seq_ids, num_seqs)
    with pytest.raises(ValueError, match="bfloat16"):
        sequence_nll(hidden, weight.bfloat16(), targets, seq_ids, num_seqs)


# ----------------------------------------------------------------------------------------------
# GPU only: the real Qwen2.5 vocabulary and the default tiles and Triton blocks.

@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", IMPLS)
def test_gpu_real_vocabulary(impl, dtype, monkeypatch):
    monkeypatch.undo()  # the default Triton blocks
    case = make_case(T=3000, V=151_936, d=896, num_seqs=9, dtype=dtype)
    nll_sum, _, dh, dw = run(*case, impl=impl)
    assert_no_worse_than_naive((nll_sum, dh, dw), naive(*case), reference(*case),
                               ulp=2 ** -7 if dtype == torch.bfloat16 else 1e-5)


@needs_cuda
def test_gpu_auto_picks_triton_and_saves_memory(monkeypatch):
    monkeypatch.undo()
    calls = []
    original = triton_ce.lse_update
    monkeypatch.setattr(triton_ce, "lse_update", lambda *a: calls.append(1) or original(*a))
    hidden, weight, targets, seq_ids, num_seqs, grad = make_case(
        T=8192, V=151_936, d=896, num_seqs=4, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run(hidden, weight, targets, seq_ids, num_seqs, grad, impl="auto")
    peak = torch.cuda.max_memory_allocated() - base
    assert calls
    # naive needs several (T, V) buffers; this holds tiles, fp32 accumulators and the gradients
    assert peak < 0.5 * 8192 * 151_936 * 2  # half the bf16 logits
