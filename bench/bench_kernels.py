"""CPU benchmark: kernels.sequence_nll(impl="torch") against the naive full-logits loss.

Both variants compute the same thing, fp32: per-sequence sums of token NLL for T tokens under a
V-word head, then backward with a non-uniform upstream gradient (random per-sequence weights).
naive: logits = h @ W.T (T x V), F.cross_entropy(reduction="none"), index_add per sequence.

Both run in this one process, alternating, on identical inputs; their results are compared, so the
ratios are between two runs that agree.
Time: wall clock of one forward + backward, best of --repeats.
Peak memory: growth of the process's peak resident set size (VmHWM in /proc/self/status) over one
forward + backward, from a baseline taken after freeing the previous run, returning freed heap
pages to the OS (glibc malloc_trim) and resetting the peak (writing 5 to /proc/self/clear_refs).
RSS counts every byte torch touches, including temporaries inside ops that no tensor-level hook
sees. Linux only.

    python bench/bench_kernels.py                        # T=4096, V=151,936, d=896 (~4 min)
    python bench/bench_kernels.py --json bench/out/cpu_kernels.json
    python bench/bench_kernels.py --T 512 --V 32000 --d 64   # quick
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import peak_rss  # noqa: E402
from kernels import IGNORE_INDEX, sequence_nll  # noqa: E402

VARIANTS = ["naive", "torch"]


def make_inputs(T, V, d, num_seqs, seed=0):
    """num_seqs equal sequences, the first eighth of each ignored (a prompt), fp32."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, d, generator=gen)  # (T, d)
    weight = torch.randn(V, d, generator=gen).div_(d ** 0.5)  # (V, d), logits of std ~1
    targets = torch.randint(0, V, (T,), generator=gen)  # (T,)
    seq_ids = torch.arange(T) * num_seqs // T  # (T,) contiguous sequences
    targets[torch.arange(T) % (T // num_seqs) < T // num_seqs // 8] = IGNORE_INDEX
    grad = torch.rand(num_seqs, generator=gen) + 0.5  # (num_seqs,) non-uniform upstream gradient
    return hidden, weight, targets, seq_ids, grad


def naive_nll(hidden, weight, targets, seq_ids, num_seqs):
    nll = F.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE_INDEX,
                          reduction="none")  # (T,), through the full (T, V) logits
    return torch.zeros(num_seqs).index_add(0, seq_ids, nll)


def fwd_bwd(variant, hidden, weight, targets, seq_ids, grad):
    h = hidden.detach().requires_grad_()
    w = weight.detach().requires_grad_()
    if variant == "naive":
        nll_sum = naive_nll(h, w, targets, seq_ids, len(grad))
    else:
        nll_sum, _ = sequence_nll(h, w, targets, seq_ids, len(grad), impl=variant)
    (nll_sum * grad).sum().backward()
    return nll_sum.detach(), h.grad, w.grad


def measure(variant, inputs):
    """One forward + backward: (time in s, peak-RSS growth in bytes, results)."""
    def timed():
        t0 = time.perf_counter()
        result = fwd_bwd(variant, *inputs)
        return time.perf_counter() - t0, result

    (seconds, result), peak, _ = peak_rss(timed)
    return seconds, peak, result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--V", type=int, default=151_936)
    p.add_argument("--d", type=int, default=896)
    p.add_argument("--num-seqs", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", help="write the results to this JSON file")
    args = p.parse_args()

    inputs = make_inputs(args.T, args.V, args.d, args.num_seqs)
    runs = {v: dict(times_s=[], peak_mem_bytes=0) for v in VARIANTS}
    outputs = {}
    for _ in range(args.repeats):
        for variant in VARIANTS:  # alternating, so both see the same machine conditions
            outputs.pop(variant, None)  # free this variant's previous results first
            t, peak, outputs[variant] = measure(variant, inputs)
            runs[variant]["times_s"].append(t)
            runs[variant]["peak_mem_bytes"] = max(runs[variant]["peak_mem_bytes"], peak)
    results = {v: dict(time_s=min(r["times_s"]), **r) for v, r in runs.items()}
    # the two runs must agree before their costs are compared
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()
    agree = {name: rel(a, b) for name, a, b in zip(["nll_sum", "d_hidden", "d_weight"],
                                                   outputs["torch"], outputs["naive"])}
    naive, ours = results["naive"], results["torch"]
    logits_bytes = args.T * args.V * 4
    print(f"T={args.T} V={args.V} d={args.d} fp32, fwd+bwd, {torch.get_num_threads()} threads; "
          f"full fp32 logits would be {logits_bytes / 2**30:.2f} GiB")
    print(f"{'variant':<8} {'time (s)':>9} {'peak mem (MiB)':>15}")
    for name, r in results.items():
        print(f"{name:<8} {r['time_s']:9.2f} {r['peak_mem_bytes'] / 2**20:15.0f}")
    time_ratio = ours["time_s"] / naive["time_s"]
    mem_ratio = ours["peak_mem_bytes"] / naive["peak_mem_bytes"]
    print(f"torch / naive: time {time_ratio:.2f}x, peak memory {mem_ratio:.3f}x (target <= 0.25)")
    print("max relative difference torch vs naive: " +
          ", ".join(f"{k} {v:.1e}" for k, v in agree.items()))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(T=args.T, V=args.V, d=args.d, dtype="float32", device="cpu",
                           threads=torch.get_num_threads(), memory="peak RSS growth (VmHWM)",
                           results=results, time_ratio=time_ratio, peak_mem_ratio=mem_ratio,
                           max_rel_diff=agree), f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
