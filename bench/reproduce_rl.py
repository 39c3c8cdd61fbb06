"""
The README's RL tables, on both toy tasks (data/synthetic.py): "synthetic", where any correct answer
counts, and "synthetic-short", where only the shortest strategy's does, so that the right mode
depends on the question. Per task, from the seed-s SSFT and `mixed` models of bench/reproduce.py,
every RL run at the same budget (100 steps x 16 prompts x 8 rollouts), evaluated on 400 held-out
questions (4 samples per tag, 8 of <think1> and 8 with the model's own tag, T=0.7):

1. What GFPO must learn and what it breaks, for each candidate setting (REMEDIES: which weights the
   fork's gradient may move, and how fast): the mean accuracy of the six tags (do the tags keep
   their answers?) and its change, the best single tag, Pass@1 with the model's own tag (has it
   learned which tag to open?) against the SSFT model's best tag, the greedy oracle (some tag right
   greedily: what choosing per question could reach) and the entropy of the mean tag distribution.
2. The paper's comparison: SSFT + GFPO (gfpo.py's default setting, DEFAULT) against SFT + GRPO (the
   `mixed` model, `--mode grpo --shared-tag`): the best single tag, Pass@1 with the own tag (SFT:
   its shared tag), Pass@1 with <think1>, native Cons@6.

Mean and range over the seeds. Runs that exist are reused; --jobs 2 runs two at a time, one thread
each.

    python bench/reproduce_rl.py                # about 80 minutes on 2 CPU cores (3 seeds, 2 tasks)
    python bench/reproduce_rl.py --table-only   # print from the runs that exist
    python bench/gfpo_damage.py                 # which weights moved, and how far
"""
import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EVAL = ["--questions", "400", "--samples", "4", "--pass-samples", "8"]
TASKS = ("synthetic", "synthetic-short")
# Candidate settings at an equal rollout budget; DEFAULT is gfpo.py's (--update all; lr 0 means 1e-5 then).
REMEDIES = {
    "opener, lr 1e-2": ["--update", "opener", "--lr", "1e-2"],
    "opener, lr 3e-3": ["--update", "opener", "--lr", "3e-3"],
    "all weights, lr 1e-5": ["--update", "all", "--lr", "1e-5"],
}
DEFAULT = "all weights, lr 1e-5"


def sh(args, threads):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, check=True, env=env, stdout=subprocess.DEVNULL)


def report(run, task, shared, threads, make=None, table_only=False):
    """The eval.py report of `run` on `task` (made first: `make`, a gfpo.py command, if its model is missing)."""
    out = Path(run) / f"eval_rl-{task}.json"
    if not out.exists() and not table_only:
        if make and not (Path(run) / "model").exists():
            sh(make, threads)
        sh(["eval.py", "--model", run, "--data", task, *EVAL, *(["--shared-tag"] if shared else []), "--out", out],
           threads)
    return json.loads(out.read_text())


def run_all(jobs, n_jobs, table_only):
    """jobs: {key: (run, task, shared, make)} -> {key: report}, n_jobs at a time, one thread each."""
    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    with ThreadPoolExecutor(n_jobs) as pool:
        futures = {key: pool.submit(report, *job, threads, make, table_only) for key, (*job, make) in jobs.items()}
        return {key: f.result() for key, f in futures.items()}


def fmt(values):
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} ({v.min():.3f}-{v.max():.3f})"


def base(a, mode, seed):
    run = Path(a.runs) / "reproduce" / f"{mode}-seed{seed}"
    if not (run / "model").exists() and not a.table_only:
        sh(["ssft.py", "--mode", mode, "--seed", seed, "--out", run, "--overwrite"], os.cpu_count() or 1)
    return run


def gfpo_run(a, task, name, seed):
    flags = REMEDIES[name]
    run = Path(a.runs) / "rl" / task / f"gfpo-{'-'.join(flags[1::2])}-seed{seed}"
    return run, ["gfpo.py", "--model", base(a, "ssft", seed), "--data", task, *flags, "--seed", seed, "--out", run,
                 "--overwrite", "--eval-questions", "0"]


def jobs(a):
    """Every run both tables need: {(task, row, seed): (run, task, shared, make)}."""
    out = {}
    for task in a.tasks:
        for seed in a.seeds:
            ssft, mixed = base(a, "ssft", seed), base(a, "mixed", seed)
            grpo = Path(a.runs) / "rl" / task / f"grpo-seed{seed}"
            out[task, "SSFT", seed] = (ssft, task, False, None)
            for name in REMEDIES:
                run, make = gfpo_run(a, task, name, seed)
                out[task, name, seed] = (run, task, False, make)
            out[task, "SFT (mixed)", seed] = (mixed, task, True, None)
            out[task, "SFT + GRPO", seed] = (grpo, task, True, [
                "gfpo.py", "--model", mixed, "--data", task, "--mode", "grpo", "--shared-tag", "--update", "all",
                "--lr", "1e-5", "--seed", seed, "--out", grpo, "--overwrite", "--eval-questions", "0"])
    return out


def remedies_table(a, r, task):
    print(f"\n{task}: GFPO, 100 steps x 16 x 8 rollouts from the SSFT model; mean (min-max) over seeds {a.seeds}\n")
    print("| GFPO setting | mean accuracy of the 6 tags | change | best single tag | pass@1, own tag | "
          "own tag - SSFT's best tag | greedy oracle | tag entropy (nats) |")
    print("|---|---|---|---|---|---|---|---|")
    before = [r[task, "SSFT", s] for s in a.seeds]
    mean0 = [np.mean([t["accuracy"] for t in b["per_tag"]]) for b in before]
    best0 = [max(t["accuracy"] for t in b["per_tag"]) for b in before]
    for name in ["SSFT", *REMEDIES]:
        rows = [r[task, name, s] for s in a.seeds]
        mean = [np.mean([t["accuracy"] for t in x["per_tag"]]) for x in rows]
        own = [x["pass@1_self"] for x in rows]
        print(f"| {'SSFT, before' if name == 'SSFT' else name} | {fmt(mean)} | {fmt(np.subtract(mean, mean0))} | "
              f"{fmt([max(t['accuracy'] for t in x['per_tag']) for x in rows])} | {fmt(own)} | "
              f"{fmt(np.subtract(own, best0))} | {fmt([x['greedy_oracle'] for x in rows])} | "
              f"{fmt([x['tag_distribution']['entropy_of_mean'] for x in rows])} |")


def main_table(a, r, task):
    print(f"\n{task}: mean (min-max) over seeds {a.seeds}; 400 held-out questions, T=0.7\n")
    print("| model | best single tag, pass@1 | pass@1, own tag (SFT: `<think>`) | pass@1, `<think1>` | cons@6 |")
    print("|---|---|---|---|---|")
    for name, row in (("SSFT", "SSFT"), ("SSFT + GFPO", DEFAULT), ("SFT (mixed)", "SFT (mixed)"),
                      ("SFT + GRPO", "SFT + GRPO")):
        rows = [r[task, row, s] for s in a.seeds]
        own = fmt([x.get("pass@1_self", x["pass@1"]) for x in rows])  # SFT: its one tag is its own
        think1 = "-" if "SFT (" in name or "GRPO" in name else fmt([x["pass@1"] for x in rows])
        print(f"| {name} | {fmt([max(t['accuracy'] for t in x['per_tag']) for x in rows])} | {own} | {think1} | "
              f"{fmt([x['cons@N'] for x in rows])} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=str(ROOT / "runs"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--table-only", action="store_true", help="print from the runs that exist")
    a = p.parse_args()
    r = run_all(jobs(a), a.jobs, a.table_only)
    for task in a.tasks:
        remedies_table(a, r, task)
        main_table(a, r, task)
    print("\nFor SFT models every tag is the shared <think>: the best single tag and the own tag are one prompt "
          "sampled in two runs.")


if __name__ == "__main__":
    main()
