"""
The project page's picture, diversity against accuracy under temperature scaling, on the toy: the
seed-0 models of bench/reproduce.py (SSFT, random tags, one shared tag) evaluated at several
sampling temperatures: Pass@1 (<think1>) against Pass@6 over one sample of each of the 6 tags
(pass@k_tags; the shared <think> six times for `mixed`) and against Cons@6, one curve per model.

The claim it tests: global forking raises Pass@k without lowering Pass@1, where raising the
temperature of a model without forking tags trades one for the other.

    python bench/temperature.py                      # runs/temperature.png and a table
    python bench/temperature.py --temperatures 0.3 0.7 1.0 --questions 200
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from plots import plot_temperatures  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=str(ROOT / "runs" / "reproduce"))
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.3, 0.5, 0.7, 1.0])
    p.add_argument("--questions", type=int, default=200)
    a = p.parse_args()
    results = {}
    for mode in ("ssft", "random", "mixed"):
        run = Path(a.runs) / f"{mode}-seed0"
        if not (run / "model").exists():
            subprocess.run([sys.executable, "ssft.py", "--mode", mode, "--out", str(run), "--overwrite"],
                           cwd=ROOT, check=True)
        report = run / "eval_temperatures.json"
        if not report.exists():
            subprocess.run([sys.executable, "eval.py", "--model", str(run), "--questions", str(a.questions),
                            "--temperatures", ",".join(map(str, a.temperatures)), "--out", str(report),
                            *(["--shared-tag"] if mode == "mixed" else [])], cwd=ROOT, check=True)
        results[mode] = json.loads(report.read_text())
    k = 6
    print(f"| model | T | pass@1 | pass@{k} | cons@6 |\n|---|---|---|---|---|")
    for mode, by_t in results.items():
        for t in sorted(by_t, key=float):
            r = by_t[t]
            print(f"| {mode} | {t} | {r['pass@1']:.3f} | {r['pass@k_tags'][str(k)]:.3f} | {r['cons@N']:.3f} |")
    plot_temperatures(results, ROOT / "runs" / "temperature.png", k)


if __name__ == "__main__":
    main()
