"""Throughput of rewards.py: math responses graded per second, sandboxed programs run per second.

Run: python bench/bench_rewards.py [--json PATH] [--threads 2] [--programs 100]

Math: grade_math on the 500 MATH-500 `solution` texts against their `answer`s (from
../shared/data/math500.jsonl), one calling thread and --threads threads (each thread gets its own
helper process), against math-verify called directly in this process (no helper, no time limit):
the ratio is the cost of the helper round trip. Then long responses: each solution after ~100 KB
of reasoning text, the length of a 32k-token generation. The first call, which starts a helper
(importing sympy), is timed apart. Every figure is one pass over responses not seen before:
math-verify caches parses, so a second pass over the same texts runs about twice as fast.

Code: run_program on a two-line stdin program, against running the same `python -I -B main.py`
with a plain subprocess.run (no launcher, no namespaces): the ratio is the sandbox's cost. Then
grade_code on a 10-test LiveCodeBench-style problem (programs per second = tests per second).
"""
import argparse
import functools
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import math_verify

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rewards  # noqa: E402
from rewards import grade_code, grade_math, run_program  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500.jsonl"
PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"


def per_second(fn, items, threads=1):
    start = time.perf_counter()
    if threads == 1:
        results = [fn(*item) for item in items]
    else:
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(lambda item: fn(*item), items))
    return len(items) / (time.perf_counter() - start), results


@functools.lru_cache(maxsize=None)
def parse_gold(gold):
    delimited = rewards._DELIMITED.search(gold)
    return math_verify.parse(gold if delimited else "\\boxed{" + gold + "}", parsing_timeout=None)


def in_process(response, gold):
    """math-verify as rewards' helper calls it, but here, without a helper or a time limit."""
    return math_verify.verify(parse_gold(gold), math_verify.parse(response, parsing_timeout=None),
                              timeout_seconds=None)


def fresh_helpers(k):
    """Replace the grading helpers by k new ones (their caches empty): k concurrent first calls."""
    while rewards._math_idle:
        rewards._math_idle.pop().kill()
    barrier = threading.Barrier(k)
    with ThreadPoolExecutor(k) as pool:
        list(pool.map(lambda _: barrier.wait() + grade_math("1", "1"), range(k)))


def plain_run(source, stdin):
    with tempfile.TemporaryDirectory() as d:
        Path(d, "main.py").write_text(source)
        subprocess.run([sys.executable, "-I", "-B", "main.py"], input=stdin.encode(), cwd=d,
                       env={}, capture_output=True, timeout=30)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="calling threads for the parallel math figure")
    ap.add_argument("--programs", type=int, default=100, help="runs per program figure")
    args = ap.parse_args()
    rows = []

    def report(case, value, unit, **extra):
        rows.append(dict(case=case, value=value, unit=unit, **extra))
        tail = "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in extra.items())
        print(f"{case:<52}{value:>10.1f} {unit:<14}{tail}")

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled": on purpose
    items = [(r["solution"], r["answer"]) for r in map(json.loads, DATA.read_text().splitlines())]
    start = time.perf_counter()
    fresh_helpers(1)
    report("math: first call (starts a helper)", time.perf_counter() - start, "s")
    direct, _ = per_second(in_process, items)  # golds parsed once in both
    ours, results = per_second(grade_math, items)
    report("math: MATH-500 solutions, 1 thread", ours, "responses/s", agree=sum(results),
           in_process=direct, ratio=direct / ours)
    fresh_helpers(args.threads)
    many, _ = per_second(grade_math, items, threads=args.threads)
    report(f"math: MATH-500 solutions, {args.threads} threads", many, "responses/s",
           helpers=len(rewards._math_idle))
    fresh_helpers(1)
    padding = "Let me reason about this step by step, checking every case. " * 1700
    long_items = [(padding + s, a) for s, a in items[:100]]
    longs, results = per_second(grade_math, long_items)
    report(f"math: {len(padding) // 1000} KB responses, 1 thread", longs, "responses/s",
           agree=sum(results))

    n = args.programs
    plain, _ = per_second(plain_run, [(PROGRAM, "2 3\n")] * n)
    sandboxed, results = per_second(run_program, [(PROGRAM, "2 3\n")] * n)
    assert all(r.stdout == "5\n" for r in results)
    report("code: run_program, a + b", sandboxed, "programs/s", isolated=results[0].isolated,
           plain_subprocess=plain, ratio=plain / sandboxed)
    tests = [{"input": f"{i} {i * i}\n", "output": f"{i + i * i}\n", "testtype": "stdin"}
             for i in range(10)]
    graded, results = per_second(grade_code, [(PROGRAM, tests)] * max(1, n // 10))
    assert all(r.passed for r in results)
    report("code: grade_code, 10 stdin tests + LCB prelude", graded * len(tests), "programs/s",
           problems_per_s=graded)

    if args.json:
        meta = dict(python=platform.python_version(), math_verify=metadata.version("math-verify"),
                    machine=platform.machine(), cpus=os.cpu_count(), root=os.geteuid() == 0)
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=rows), f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
