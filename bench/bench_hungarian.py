"""Speed of hungarian.linear_sum_assignment against scipy.optimize.linear_sum_assignment (C++).

Run: python bench/bench_hungarian.py [--json PATH] [--repeats 3]

Both solvers get the same pre-generated matrices in the same process; each figure is the best of
--repeats passes over them, in microseconds per call. 6x4 is the SSFT shape (6 forking tags x 4
traces, one solve per question per step); the larger shapes show how the numpy loop scales. The
costs of the two solutions are checked to agree before anything is timed.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import scipy
from scipy.optimize import linear_sum_assignment as scipy_lsa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hungarian import linear_sum_assignment  # noqa: E402

# (label, shape, calls, generator): calls keeps each case at about a second of our solver's time.
CASES = [
    ("6x4 float (SSFT)", (6, 4), 20_000, lambda rng, s: rng.random(s)),
    ("4x6 float", (4, 6), 20_000, lambda rng, s: rng.random(s)),
    ("64x64 float", (64, 64), 200, lambda rng, s: rng.random(s)),
    ("64x64 int 0..2 (ties)", (64, 64), 200, lambda rng, s: rng.integers(0, 3, s).astype(float)),
    ("256x256 float", (256, 256), 20, lambda rng, s: rng.random(s)),
]


def best_time(solve, mats, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for c in mats:
            solve(c)
        best = min(best, time.perf_counter() - t0)
    return best / len(mats) * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    ap.add_argument("--repeats", type=int, default=3, help="passes per case; the best one counts")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    rows = []
    print(f"{'case':<24}{'calls':>8}{'ours us':>12}{'scipy us':>12}{'ours/scipy':>12}")
    for label, shape, calls, gen in CASES:
        mats = [gen(rng, shape) for _ in range(calls)]
        for c in mats[:50]:
            r, k = linear_sum_assignment(c)
            rs, ks = scipy_lsa(c)
            assert np.isclose(c[r, k].sum(), c[rs, ks].sum(), rtol=1e-12, atol=1e-12), label
        ours = best_time(linear_sum_assignment, mats, args.repeats)
        ref = best_time(scipy_lsa, mats, args.repeats)
        rows.append(dict(case=label, shape=list(shape), calls=calls, ours_us=ours, scipy_us=ref,
                         ratio=ours / ref))
        print(f"{label:<24}{calls:>8}{ours:>12.1f}{ref:>12.1f}{ours / ref:>12.1f}")

    if args.json:
        meta = dict(numpy=np.__version__, scipy=scipy.__version__, python=platform.python_version(),
                    machine=platform.machine(), cpus=os.cpu_count(), repeats=args.repeats)
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=rows), f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
