"""GPU benchmark of the fused per-sequence linear cross-entropy (kernels.sequence_nll).

For T in {8192, 32768} tokens, d in {896, 5120} (Qwen2.5-0.5B and -32B), V = 151,936, bf16, it
times forward + backward (non-uniform per-sequence upstream gradient) and measures peak memory of:
    triton  sequence_nll(impl="triton"): tiles of logits, Triton softmax kernels
    torch   sequence_nll(impl="torch"):  the same tiles, pure torch ops
    naive   logits = h @ W.T; F.cross_entropy(reduction="none"); index_add: eager, full logits
Time: CUDA events around each forward + backward, after one warm-up run (Triton compiles there),
median of --repeats. Peak memory: torch.cuda.max_memory_allocated during the timed runs minus
what was allocated before them (the inputs), so it includes the gradients returned (dh, dW), which
every variant must hold; grad_bytes gives their size, and "-grads" / mem_beyond_grads_vs_naive the
ratio without them. An out-of-memory run is recorded, not fatal.
Targets: peak memory <= 10% of naive, time <= 1.0x naive.

    python bench/gpu_kernels.py --out bench/out/gpu_kernels.json      (or: bash bench/gpu.sh)
    python bench/gpu_kernels.py --device cpu --small                  # CPU smoke test of this file
"""
import argparse
import gc
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kernels import IGNORE_INDEX, sequence_nll  # noqa: E402  (imports no Triton until first use)

IMPLS = ["triton", "torch", "naive"]
V = 151_936


def make_inputs(T, V, d, num_seqs, dtype, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(T, d, generator=gen, device=device).to(dtype)  # (T, d)
    weight = (torch.randn(V, d, generator=gen, device=device) / d ** 0.5).to(dtype)  # (V, d)
    targets = torch.randint(0, V, (T,), generator=gen, device=device)  # (T,)
    pos = torch.arange(T, device=device) % (T // num_seqs)  # position in its sequence
    targets[pos < T // num_seqs // 8] = IGNORE_INDEX  # the first eighth (a prompt) is ignored
    seq_ids = torch.arange(T, device=device) * num_seqs // T  # (T,) equal contiguous sequences
    grad = torch.rand(num_seqs, generator=gen, device=device) + 0.5  # (num_seqs,) non-uniform
    return hidden, weight, targets, seq_ids, grad


def fwd_bwd(impl, hidden, weight, targets, seq_ids, grad):
    h = hidden.detach().requires_grad_()
    w = weight.detach().requires_grad_()
    if impl == "naive":
        nll = F.cross_entropy(h @ w.T, targets, ignore_index=IGNORE_INDEX, reduction="none")  # (T,)
        nll_sum = torch.zeros(len(grad), device=h.device).index_add(0, seq_ids, nll.float())
    else:
        nll_sum, _ = sequence_nll(h, w, targets, seq_ids, len(grad), impl=impl)
    (nll_sum * grad).sum().backward()
    return nll_sum.detach(), h.grad, w.grad


def free_memory(device):
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def bench(impl, inputs, repeats, device):
    """{time_s, peak_mem_bytes, nll_sum, dh_norm, dw_norm}, or {error: ...} on out-of-memory."""
    cuda = device == "cuda"
    out = None
    try:
        fwd_bwd(impl, *inputs)  # warm-up: Triton compilation, cuBLAS heuristics
        free_memory(device)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if cuda else 0
        times = []
        for _ in range(repeats):
            out = None  # free the previous run's gradients before the next allocates its own
            if cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                out = fwd_bwd(impl, *inputs)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                out = fwd_bwd(impl, *inputs)
                times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() - base if cuda else None
        nll_sum, dh, dw = out
        return dict(time_s=statistics.median(times), times_s=times, peak_mem_bytes=peak,
                    nll_sum=nll_sum.tolist(), dh_norm=dh.float().norm().item(),
                    dw_norm=dw.float().norm().item())
    except torch.OutOfMemoryError as e:
        return dict(error=f"out of memory: {str(e).splitlines()[0]}")
    finally:
        out = None
        free_memory(device)


def versus_naive(r, naive, grad_bytes):
    """Ratios to the naive run (none if either ran out of memory)."""
    if "error" in r or "error" in naive:
        return {}
    ref = torch.tensor(naive["nll_sum"])
    diff = (torch.tensor(r["nll_sum"]) - ref).abs().max() / ref.abs().max()
    out = dict(time_vs_naive=r["time_s"] / naive["time_s"], nll_rel_diff=diff.item())
    if r["peak_mem_bytes"] is not None:
        out["mem_vs_naive"] = r["peak_mem_bytes"] / naive["peak_mem_bytes"]
        # the same, leaving out the returned gradients that every variant must hold
        out["mem_beyond_grads_vs_naive"] = ((r["peak_mem_bytes"] - grad_bytes)
                                            / (naive["peak_mem_bytes"] - grad_bytes))
    return out


HEADER = (f"{'T':>6} {'d':>5} {'impl':<7} {'time (ms)':>10} {'peak (MiB)':>11} {'time/naive':>10} "
          f"{'mem/naive':>10} {'-grads':>7} {'nll vs naive':>12}")


def format_row(row):
    if "error" in row:
        return f"{row['T']:6d} {row['d']:5d} {row['impl']:<7} {row['error'][:70]}"
    get = lambda key, fmt: format(row[key], fmt) if row.get(key) is not None else "-"
    mem = row["peak_mem_bytes"] / 2**20 if row["peak_mem_bytes"] is not None else None
    return (f"{row['T']:6d} {row['d']:5d} {row['impl']:<7} {row['time_s'] * 1e3:10.1f} "
            f"{format(mem, '.0f') if mem is not None else '-':>11} "
            f"{get('time_vs_naive', '.2f'):>10} {get('mem_vs_naive', '.3f'):>10} "
            f"{get('mem_beyond_grads_vs_naive', '.3f'):>7} {get('nll_rel_diff', '.1e'):>12}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--small", action="store_true", help="tiny shapes, for a smoke test")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "bench/out"),
                                                 "gpu_kernels.json"))
    args = p.parse_args()
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before kernels.triton_ce is imported
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: use --device cpu --small for a smoke test")
    dtype = torch.bfloat16
    vocab, shapes = (1000, [(64, 16), (96, 32)]) if args.small else (V, [
        (8192, 896), (8192, 5120), (32768, 896), (32768, 5120)])
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"{device_name}, V={vocab}, {dtype}, forward + backward, median of {args.repeats}")
    print(HEADER)
    rows = []
    for T, d in shapes:
        inputs = make_inputs(T, vocab, d, max(1, T // 1024), dtype, args.device)
        grad_bytes = (inputs[0].numel() + inputs[1].numel()) * inputs[0].element_size()
        results = {impl: bench(impl, inputs, args.repeats, args.device) for impl in IMPLS}
        for impl, r in results.items():
            row = dict(T=T, d=d, V=vocab, dtype=str(dtype), impl=impl, grad_bytes=grad_bytes, **r)
            row.update(versus_naive(r, results["naive"], grad_bytes))
            print(format_row(row))
            row.pop("nll_sum", None)
            rows.append(row)
        del inputs
        free_memory(args.device)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(device=device_name, torch=torch.__version__, repeats=args.repeats,
                       rows=rows), f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
