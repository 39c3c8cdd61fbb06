"""
The README's RL table: the paper's headline comparison on the toy, SSFT + GFPO against SFT + GRPO.

For each seed it starts from the SSFT and the `mixed` (plain SFT) runs of bench/reproduce.py
(training them first if they are missing), runs `python gfpo.py` (Global Forking Policy
Optimization, 100 steps) on the SSFT model and `python gfpo.py --mode grpo --shared-tag` on the SFT
model, the same RL budget, and evaluates all four models on 400 held-out questions (4 samples per
tag, 8 of <think1> and 8 with the model's own tag, T=0.7). It prints, per model: the best single
tag's Pass@1, Pass@1 with the model's own tag (GFPO's pass@1_self), Pass@1 with <think1> (SFT:
with its shared tag), and the native Cons@6; mean and range over the seeds.

The learning-rate sweep (--sweep) shows what limits GFPO on the toy: per learning rate, from the
seed-0 SSFT model, the mean accuracy of the six tags' answers (how well the model still executes
each strategy), the best single tag, Pass@1 with its own tag, and the entropy of its tag choice.

    python bench/reproduce_rl.py                  # about 15 minutes a seed on 2 CPU cores
    python bench/reproduce_rl.py --table-only
    python bench/reproduce_rl.py --sweep 1e-5 3e-5 1e-4
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from gfpo import GFPOConfig  # noqa: E402

EVAL = ["--questions", "400", "--samples", "4", "--pass-samples", "8"]


def sh(*args):
    subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, check=True)


def evaluated(run, shared):
    report = Path(run) / "eval_rl.json"
    if not report.exists():
        sh("eval.py", "--model", run, *EVAL, *(["--shared-tag"] if shared else []), "--out", report)
    return json.loads(report.read_text())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=str(ROOT / "runs"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--sweep", type=float, nargs="+", help="GFPO learning rates to compare on seed 0")
    a = p.parse_args()
    if a.sweep:
        return sweep(a)
    rows = {"SSFT": [], "SSFT + GFPO": [], "SFT (mixed)": [], "SFT + GRPO": []}
    for seed in a.seeds:
        base = {m: Path(a.runs) / "reproduce" / f"{m}-seed{seed}" for m in ("ssft", "mixed")}
        rl = {"gfpo": Path(a.runs) / "rl" / f"gfpo-seed{seed}", "grpo": Path(a.runs) / "rl" / f"grpo-seed{seed}"}
        if not a.table_only:
            for mode, out in base.items():
                if not (out / "model").exists():
                    sh("ssft.py", "--mode", mode, "--seed", seed, "--out", out, "--overwrite")
            if not (rl["gfpo"] / "model").exists():
                sh("gfpo.py", "--model", base["ssft"], "--seed", seed, "--out", rl["gfpo"], "--overwrite",
                   "--eval-questions", "0")
            if not (rl["grpo"] / "model").exists():
                sh("gfpo.py", "--model", base["mixed"], "--mode", "grpo", "--shared-tag", "--seed", seed,
                   "--out", rl["grpo"], "--overwrite", "--eval-questions", "0")
        for name, run, shared in (("SSFT", base["ssft"], False), ("SSFT + GFPO", rl["gfpo"], False),
                                  ("SFT (mixed)", base["mixed"], True), ("SFT + GRPO", rl["grpo"], True)):
            r = evaluated(run, shared)
            best = max(t["accuracy"] for t in r["per_tag"])
            rows[name].append([best, r.get("pass@1_self", float("nan")), r["pass@1"], r["cons@N"]])
    print("| model | best single tag, pass@1 | pass@1, own tag | pass@1, `<think1>` (SFT: `<think>`) | cons@6 |")
    print("|---|---|---|---|---|")
    for name, vals in rows.items():
        v = np.array(vals)
        cells = ["-" if np.isnan(col).all() else f"{col.mean():.3f} ({col.min():.3f}-{col.max():.3f})" for col in v.T]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nmean (min-max) over seeds {a.seeds}; 400 held-out questions, T=0.7. For SFT models every 'tag' is "
          "the shared <think>, so the best single tag is the same prompt as pass@1.")


def sweep(a):
    base = Path(a.runs) / "reproduce" / "ssft-seed0"
    if not (base / "model").exists():
        sh("ssft.py", "--seed", 0, "--out", base, "--overwrite")
    print("| GFPO lr | mean accuracy of the 6 tags | best single tag | pass@1, own tag | tag entropy (nats) |")
    print("|---|---|---|---|---|")
    for lr in [None, *a.sweep]:
        if lr is None:
            run = base
        else:  # the default learning rate is the main table's run
            run = Path(a.runs) / "rl" / ("gfpo-seed0" if lr == GFPOConfig.lr else f"gfpo-seed0-lr{lr:g}")
        if lr is not None and not (run / "model").exists():
            sh("gfpo.py", "--model", base, "--lr", lr, "--out", run, "--overwrite", "--eval-questions", "0")
        r = evaluated(run, False)
        acc = [t["accuracy"] for t in r["per_tag"]]
        print(f"| {'SSFT, before' if lr is None else f'{lr:g}'} | {np.mean(acc):.3f} | {max(acc):.3f} | "
              f"{r['pass@1_self']:.3f} | {r['tag_distribution']['entropy']:.2f} |")


if __name__ == "__main__":
    main()
