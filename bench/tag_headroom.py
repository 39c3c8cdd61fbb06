"""
How much a per-question choice of tag could gain on the toy, and how much of it can be read off the
question: S samples of every tag on each question give each (question, tag) an accuracy, and from
that table: the best single tag, the best tag of each question (an oracle that has seen the
samples), and the best tag of each length of digit string (a choice made from the question alone,
by the feature that changes which strategy is easiest), beside the model's own choice (its tag
distribution at the forking token) and its argmax.

    python bench/tag_headroom.py                            # out/ssft, 300 training questions
    python bench/tag_headroom.py --model runs/rl/synthetic/gfpo-all-1e-5-seed0 --held-out
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import synthetic  # noqa: E402
from distributed import World  # noqa: E402
from eval import FORK_BUDGET, load  # noqa: E402
from sampling import LocalEngine, chat_prompts, fork_logits, fork_policy, sample  # noqa: E402
from tasks import SyntheticTask  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="out/ssft")
    p.add_argument("--questions", type=int, default=300)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--held-out", action="store_true", help="the held-out questions instead of training ones")
    a = p.parse_args()
    model, tok = load(a.model)
    train, held_out = synthetic.split(n_held_out=a.questions)
    examples = held_out if a.held_out else train[:a.questions]
    task = SyntheticTask(examples)
    prompts, Q, S = chat_prompts(tok, task, 6), len(examples), a.samples
    gen = sample(LocalEngine(model), (Q, 6, S), lambda q, i, s: (prompts.ids[q], prompts.slots[i], (0, 9, q, i, s)),
                 temperature=0.7, top_p=0.95, max_new=120, stop=prompts.stop)
    acc = np.array([[[task.grade(tok.decode(ids, skip_special_tokens=True), q) for ids in tag] for tag in gen[q]]
                    for q in range(Q)], dtype=float).mean(2)  # (Q, N)
    length = np.array([len(ex.question.split()[1]) for ex in examples])
    by_length = {n: acc[length == n].mean(0).argmax() for n in set(length)}
    logits = fork_logits(model, prompts, range(Q), FORK_BUDGET, World(device=next(model.parameters()).device))
    own = fork_policy(logits, prompts.tags, 0.7).exp().numpy()  # (Q, N): the model's own choice, at the sampling T
    print(f"{a.model}, {Q} {'held-out' if a.held_out else 'training'} questions, {S} samples per tag at T=0.7")
    print("  accuracy per tag        " + " ".join(f"{x:.3f}" for x in acc.mean(0)))
    print(f"  best single tag         {acc.mean(0).max():.3f}")
    print(f"  best tag by length      {np.mean([acc[q, by_length[length[q]]] for q in range(Q)]):.3f}")
    print(f"  best tag per question   {acc.max(1).mean():.3f}   (having seen the samples)")
    argmax = acc[np.arange(Q), own.argmax(1)].mean()
    print(f"  own tag, sampled        {(acc * own).sum(1).mean():.3f}   argmax {argmax:.3f}")


if __name__ == "__main__":
    main()
