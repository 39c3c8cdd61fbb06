"""
Where GFPO's damage comes from: which weights a GFPO run moved away from its SSFT model, how far
(the relative displacement ||W_after - W_before|| / ||W_before|| of each group), and what the six
tags' accuracy did meanwhile. The groups: the embedding rows of the tag digits (the forking tokens
"1".."6", which the answers use too; in the tied demo model also the output rows that predict
every digit of every answer), the row of the tag's opener "<think", the other embedding rows, the
attention and the MLP of each block, and the RMSNorm gains.

It reads the GFPO runs of `bench/reproduce_rl.py` (seed 0 by default) and their eval reports.

    python bench/gfpo_damage.py                       # the plain task, seed 0
    python bench/gfpo_damage.py --task synthetic-short --seed 1
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from data import forking_tags  # noqa: E402
from data.tokenizer import load_tokenizer  # noqa: E402


def weights(run, exported):
    """name -> fp32 array: a run's exported model (what GFPO started from, bf16), or the fp32 weights
    of its last checkpoint (a bf16 export would round the smallest moves away)."""
    if exported:
        return {k: v.float().numpy() for k, v in load_file(Path(run) / "model" / "model.safetensors").items()}
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(Path(run) / "checkpoint", Path(tmp) / "state.pt")
        state = torch.load(Path(tmp) / "state.pt", weights_only=False)["model"]
    return {k: v.float().numpy() for k, v in state.items()}


def groups(before, tags):
    """group name -> list of (tensor name, row index or None) it covers."""
    digits, opener = list(tags.fork_ids), tags.ids[0][tags.fork - 1]
    emb = "model.embed_tokens.weight"
    other = [i for i in range(before[emb].shape[0]) if i not in (*digits, opener)]
    out = {"embedding: tag digit rows": [(emb, digits)], "embedding: opener row": [(emb, [opener])],
           "embedding: other rows": [(emb, other)]}
    layers = sorted({int(k.split(".")[2]) for k in before if k.startswith("model.layers.")})
    for i in layers:
        for part in ("self_attn", "mlp"):
            out[f"block {i}: {part}"] = [(k, None) for k in before if k.startswith(f"model.layers.{i}.{part}.")]
    out["RMSNorm gains"] = [(k, None) for k in before if k.endswith("norm.weight")]
    return out


def displacement(before, after, parts):
    """||after - before|| / ||before|| over the group's tensors (rows None: the whole tensor)."""
    pick = [(k, slice(None) if rows is None else rows) for k, rows in parts]
    return (sum(float(np.sum((after[k] - before[k])[r] ** 2)) for k, r in pick)
            / sum(float(np.sum(before[k][r] ** 2)) for k, r in pick)) ** 0.5


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=str(ROOT / "runs"))
    p.add_argument("--task", default="synthetic")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    base = Path(a.runs) / "reproduce" / f"ssft-seed{a.seed}"
    tags = forking_tags(load_tokenizer(base / "model"), 6)
    before = weights(base, exported=True)
    report = json.loads((base / f"eval_rl-{a.task}.json").read_text())
    acc0 = np.array([t["accuracy"] for t in report["per_tag"]])
    runs = {}  # every GFPO run of the seed, gfpo-{update}-{lr}-seed{seed}, by its setting
    for run in sorted((Path(a.runs) / "rl" / a.task).glob(f"gfpo-*-seed{a.seed}")):
        update, lr = run.name[len("gfpo-"):-len(f"-seed{a.seed}")].split("-", 1)
        if (run / f"eval_rl-{a.task}.json").exists():
            runs[f"{update}, lr {lr}"] = run
    parts = groups(before, tags)
    print(f"{a.task}, seed {a.seed}: relative displacement ||dW|| / ||W|| per group after 100 GFPO steps\n")
    print("| group | " + " | ".join(runs) + " |")
    print("|---|" + "---|" * len(runs))
    after = {name: weights(run, exported=False) for name, run in runs.items()}
    for group, members in parts.items():
        print(f"| {group} | " + " | ".join(f"{displacement(before, after[n], members):.1e}" for n in runs) + " |")
    cells = []
    for run in runs.values():
        r = json.loads((run / f"eval_rl-{a.task}.json").read_text())
        acc = np.array([t["accuracy"] for t in r["per_tag"]])
        cells.append(" ".join(f"{d:+.2f}" for d in acc - acc0) + f" (mean {np.mean(acc - acc0):+.3f})")
    print("| each tag's accuracy, change | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
