"""
Pictures of a run (needs matplotlib, an optional extra: pip install matplotlib):
- strategies.png: the tags x strategies heatmaps of eval.json (sampled and greedy);
- matching.png: over the steps, the loss, the mean matched cost, and matching convergence (the
  share of questions whose tag assignment changed since they were last seen).

    python plots.py out/ssft
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt


def plot_run(out, report=None):
    out = Path(out)
    report = report or json.loads((out / "eval.json").read_text())
    if "table" in report:
        names = report["strategies"] + ["none"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key, title in zip(axes, ("table", "table_greedy"), ("sampled", "greedy")):
            table = report[key]
            ax.imshow(table, cmap="Blues")
            ax.set_xticks(range(len(names)), names, rotation=30)
            ax.set_yticks(range(len(table)), [f"<think{i + 1}>" for i in range(len(table))])
            for i, row in enumerate(table):
                for j, c in enumerate(row):
                    ax.text(j, i, c, ha="center", va="center", fontsize=8)
            ax.set_title(f"{title}: purity {report['purity' if key == 'table' else 'purity_greedy']:.2f}")
        fig.tight_layout()
        fig.savefig(out / "strategies.png", dpi=120)
        plt.close(fig)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [r["step"] for r in rows]
    axes[0].plot(steps, [r["loss"] for r in rows], label="training loss")
    if rows[0]["match_cost"] is not None:
        axes[0].plot(steps, [r["match_cost"] for r in rows], label="matched cost")
        changed = [(r["step"], r["changed"]) for r in rows if r["changed"] is not None]
        axes[1].plot(*zip(*changed), ".", markersize=2)
    axes[0].set_xlabel("step")
    axes[0].legend()
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("assignments changed since last seen")
    fig.tight_layout()
    fig.savefig(out / "matching.png", dpi=120)
    plt.close(fig)
    print(f"wrote {out / 'strategies.png'} and {out / 'matching.png'}")


if __name__ == "__main__":
    plot_run(sys.argv[1])
