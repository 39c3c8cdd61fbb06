"""
The README's results table: `python ssft.py` in each mode (ssft, random, mixed) with 3 seeds, then
mean and spread (half the range over seeds) of the evaluation metrics. One run is the embedded
default (400 steps of the synthetic task); the 9 runs take about 35 minutes on 2 CPU cores.

    python bench/reproduce.py                       # train all runs that are missing, print the table
    python bench/reproduce.py --table-only          # only rebuild the table from runs/reproduce/
    python bench/reproduce.py --reeval              # evaluate the trained runs again with eval.py
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
METRICS = [("purity", "purity (T=0.7)"), ("distinct", "distinct strategies (greedy)"),
           ("distinct_sampled", "distinct (T=0.7)"), ("pass@1", "pass@1 <think1>"), ("cons@N", "cons@6"),
           ("greedy_cons@N", "cons@6 greedy"), ("greedy_oracle", "any tag right, greedy")]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", default=str(ROOT / "runs" / "reproduce"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--reeval", action="store_true", help="evaluate trained runs again (after eval.py changes)")
    a = p.parse_args()
    modes = ("ssft", "random", "mixed")
    for mode in modes:
        for seed in a.seeds:
            out = Path(a.runs) / f"{mode}-seed{seed}"
            if a.table_only:
                continue
            if (out / "eval.json").exists() and a.reeval:
                shared = ["--shared-tag"] if mode == "mixed" else []
                subprocess.run([sys.executable, "eval.py", "--model", str(out), *shared], cwd=ROOT, check=True)
            elif not (out / "eval.json").exists():
                t = time.time()
                subprocess.run([sys.executable, "ssft.py", "--mode", mode, "--seed", str(seed), "--out", str(out),
                                "--overwrite"], cwd=ROOT, check=True)
                (out / "wall_seconds.txt").write_text(f"{time.time() - t:.1f}\n")
    print("| mode | " + " | ".join(title for _, title in METRICS) + " |")
    print("|---" * (len(METRICS) + 1) + "|")
    for mode in modes:
        reports = [json.loads((Path(a.runs) / f"{mode}-seed{s}" / "eval.json").read_text()) for s in a.seeds]
        cells = []
        for key, _ in METRICS:
            v = np.array([r[key] for r in reports])
            cells.append(f"{v.mean():.2f} ± {(v.max() - v.min()) / 2:.2f}")
        print(f"| {mode} | " + " | ".join(cells) + " |")
    print(f"\nmean ± half-range over seeds {a.seeds}; {reports[0]['questions']} held-out questions, "
          f"{reports[0]['samples_per_tag']} samples per tag at T={reports[0]['temperature']}")


if __name__ == "__main__":
    main()
