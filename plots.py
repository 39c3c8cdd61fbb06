"""
Pictures of a run (needs matplotlib, an optional extra: pip install matplotlib):
- strategies.png: the tags x strategies heatmaps of eval.json (sampled and greedy);
- matching.png (ssft.py runs): over the steps, the loss and the mean matched cost; matching
  convergence (the share of questions whose tag assignment changed since they were last seen, with
  its running mean); and which tags the training matching gave each source in the last fifth;
- policy.png (gfpo.py runs): the mean reward and the share of zero-variance groups over the steps,
  and the mean probability of each tag at the forking token;
- temperatures.png (plot_temperatures): Pass@1 against Pass@k and Cons@N, one curve per model,
  one point per sampling temperature.

    python plots.py out/ssft
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt

from run import read_metrics


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
            top = max(map(max, table))
            for i, row in enumerate(table):
                for j, c in enumerate(row):
                    ax.text(j, i, c, ha="center", va="center", fontsize=8, color="white" if c > top / 2 else "black")
            ax.set_title(f"{title}: purity {report['purity' if key == 'table' else 'purity_greedy']:.2f}")
        fig.tight_layout()
        fig.savefig(out / "strategies.png", dpi=120)
        plt.close(fig)
    rows = read_metrics(out / "metrics.jsonl")
    if rows and "reward" in rows[0]:
        return plot_policy(out, rows)
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
    steps = [r["step"] for r in rows]
    axes[0].plot(steps, [r["loss"] for r in rows], label="training loss")
    axes[0].set_xlabel("step")
    if rows[0]["match_cost"] is not None:  # (runs from before mixed mode logged its grid have None)
        axes[0].plot(steps, [r["match_cost"] for r in rows], label="matched cost")
        changed = [(r["step"], r["changed"]) for r in rows if r["changed"] is not None]
        x, y = zip(*changed) if changed else ((), ())  # empty until a question is seen twice
        k = max(1, min(20, len(y)))
        axes[1].plot(x, y, ".", markersize=2, alpha=0.5)
        axes[1].plot(x[k - 1:], [sum(y[i:i + k]) / k for i in range(len(y) - k + 1)], label=f"mean of {k}")
        axes[1].set(xlabel="step", ylabel="assignments changed since last seen")
        axes[1].legend()
    if rows[0]["tag_source"]:
        names = sorted(rows[0]["tag_source"])
        late = rows[len(rows) * 4 // 5:]
        n_tags = len(rows[0]["tag_source"][names[0]])
        hist = [[sum(r["tag_source"][s][t] for r in late) for s in names] for t in range(n_tags)]
        axes[2].imshow(hist, cmap="Blues", aspect="auto")
        axes[2].set_xticks(range(len(names)), names, rotation=30)
        labels = [f"<think{t + 1}>" for t in range(n_tags)] if n_tags > 1 else ["<think>"]  # mixed: one tag
        axes[2].set_yticks(range(len(hist)), labels)
        axes[2].set_title(f"training matches, steps {late[0]['step']}-{late[-1]['step']}")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "matching.png", dpi=120)
    plt.close(fig)
    print(f"wrote {out / 'strategies.png'} and {out / 'matching.png'}")


def plot_policy(out, rows):
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    axes[0].plot(steps, [r["reward"] for r in rows], label="mean reward")
    axes[0].plot(steps, [r["zero_variance"] for r in rows], label="groups of equal rewards")
    axes[0].set_xlabel("step")
    axes[0].legend()
    if "tag_distribution" in rows[0]:  # a model with forking tags (not one shared tag)
        probs = list(zip(*[r["tag_distribution"]["mean"] for r in rows]))
        axes[1].stackplot(steps, probs, labels=[f"<think{i + 1}>" for i in range(len(probs))])
        axes[1].set(xlabel="step", ylabel="P(tag | question), mean")
        axes[1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "policy.png", dpi=120)
    plt.close(fig)
    print(f"wrote {out / 'policy.png'}")


def plot_temperatures(results, path, k):
    """results: {model name: {temperature: eval report}}; Pass@1 against Pass@k and Cons@N."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, by_t in results.items():
        ts = sorted(by_t, key=float)
        p1 = [by_t[t]["pass@1"] for t in ts]
        for ax, y in zip(axes, ([by_t[t]["pass@k_tags"][str(k)] for t in ts], [by_t[t]["cons@N"] for t in ts])):
            ax.plot(p1, y, "o-", label=name)
            for t, x, v in zip(ts, p1, y):
                ax.annotate(f"T={t}", (x, v), fontsize=7)
    axes[0].set(xlabel="pass@1", ylabel=f"pass@{k}, one sample per tag", title="diversity against accuracy")
    axes[1].set(xlabel="pass@1", ylabel="cons@N (one sample per tag, vote)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    plot_run(sys.argv[1])
