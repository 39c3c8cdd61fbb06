"""
The evaluation metrics, equal to the official ones: Sheng-J/SSFT's LightEval fork at commit 02ba191,
lighteval/src/lighteval/metrics/metrics_sample.py (PassAtK, MajAtK, MajAtKScoringFunc, MajNPassAtK,
MajAtKSoTsingle), as pure functions of already-extracted answers.

Layout. A report derives from one array, answers[q][i][s]: question q, tag i (0-based, <think{i+1}>),
sample s < S. It is the official storage order: vLLM generates the S samples of <think1>, then the S
of <think2>, ..., and concatenates them per question (vllm_model.py, _fair_split_counts), so the
official prediction list is answers[q][0] + answers[q][1] + ... ("tag-block order"). The functions
take one question's answers[q] (N lists of S), or a flat sequence.

Answers are values compared with ==. None is a failed extraction: the official code votes on
math-verify's extraction, which is [] when nothing parses, and [] == [], so all failed extractions
are one candidate, which can win the vote and then scores 0. (An empty completion is processed to ""
rather than [], a second failure candidate: pass "" for it to keep even that.)
`correct` is a gold value (an answer is right iff it == gold) or a predicate answer -> bool, e.g.
lambda a: grade(a, gold); None is never right. Which one matches the official scoring:
PassAtK and MajNPassAtK grade with math-verify (a predicate), MajAtK and MajAtKSoTsingle compare the
extracted winner with the extracted gold by == (the gold value). GPQA's official votes compare the
raw completion texts (no extraction before the vote): pass the texts as answers and a predicate
that extracts and grades the letter.

    vote(xs)    = max(xs, key=xs.count): the most common answer, ties to the first in order
    pass@k      = 1 - C(n-c, k) / C(n, k), c of the n answers right (unbiased; mean for k = 1)
    maj@k       = [vote(first k answers in tag-block order) is right]
    maj_sot@k   = the same in round-robin order answers[0][0], answers[1][0], ..., answers[0][1], ...
    native Cons = mean over s of [vote(answers[0][s], ..., answers[N-1][s]) is right]

Cons@32 is maj_sot@32 on AIME and maj@32 on MATH-500 and GPQA (CONS32_VARIANT). Pass@1 and the
Pass@k curve come from a separate run of PASS_N samples of <think1>, not from the Cons run.

    python -m pytest -q test_metrics.py
"""
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np

# Official protocol per benchmark (lighteval/src/lighteval/tasks/default_tasks.py, metrics.py).
# The *_sot6 run generates N * S per question (66 on AIME, 36 on MATH-500 and GPQA); native Cons@6 is
# "maj_6_pass@1:{6S}" (MATH-500's extra :24 and :30 variants index s + k*n/6 into the 36 and mix tags).
SAMPLES_PER_TAG = {"aime24": 11, "aime25": 11, "math500": 6, "gpqa": 6}
CONS32_VARIANT = {
    "aime24": "maj_sot",  # maj_sot@32: MajAtKSoTsingle(k=32, N_sot_tags=6), 5 rounds of 6 tags + tags 1-2
    "aime25": "maj_sot",
    "math500": "maj_blocks",  # maj@32: MajAtK(k=32), tags 1-5 in full + 2 samples of tag 6
    "gpqa": "maj_blocks",  # gpqa_maj@32_samples: MajAtKScoringFunc(k=32), votes on raw texts
}
# What a gold is parsed from: MATH-500's task grades against the worked solution (default_prompts.py
# math_500: choices=[line["solution"]]), AIME's against the answer. They differ on one question (68).
GOLD_FROM_SOLUTION = {"math500"}
# The *_greedythink1 run: PASS_N samples of <think1>; pass@k reported for these k.
PASS_N = 32
PASS_KS = {"aime24": (1, 2, 4, 6, 8, 16, 32), "aime25": (1, 2, 4, 6, 8, 16, 32), "math500": (1,), "gpqa": (1,)}
_ALIASES = {"aime24": ("aime24", "aime2024"), "aime25": ("aime25", "aime2025"), "math500": ("math500",),
            "gpqa": ("gpqa",)}


def benchmark_of(path):
    """The benchmark key of a data file name (aime24.jsonl, MATH-500.jsonl, gpqa_diamond.jsonl), or
    None for anything else (the synthetic task)."""
    stem = re.sub(r"[^a-z0-9]", "", Path(str(path)).name.split(".")[0].lower())
    return next((b for b, names in _ALIASES.items() if stem.startswith(names)), None)


def _judge(correct):
    right = correct if callable(correct) else (lambda a: a == correct)
    return lambda a: a is not None and bool(right(a))


def pass_at_k(n, c, k):
    """Unbiased estimate of P(at least one of k draws without replacement from n samples, of which
    c are correct, is correct) = 1 - C(n-c, k) / C(n, k). PassAtK.pass_at_k."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def vote(answers):
    """The official majority (every class above): the most common answer by ==, failed extractions
    (None) a candidate like any other; ties go to the one that appears first (max keeps the first)."""
    if not answers:
        raise ValueError("a vote needs at least one answer")
    answers = list(answers)
    return max(answers, key=answers.count)


def block_order(answers):
    """answers[i][s] flattened tag-major: the official prediction order."""
    return [a for tag in answers for a in tag]


def round_robin(answers):
    """answers[i][s] flattened sample-major: one answer of each tag, then the next round."""
    _shape(answers)
    return [tag[s] for s in range(len(answers[0])) for tag in answers]


def maj_at_k(answers, correct, k):
    """1.0 if the vote of the first k of a flat list of answers is right. MajAtK / MajAtKScoringFunc."""
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj@{k} needs 1 to {len(answers)} answers")
    return float(_judge(correct)(vote(answers[:k])))


def maj_blocks_at_k(answers, correct, k):
    """maj@k in tag-block order: the first k answers of tag 1, then tag 2, ... MajAtK(k) on a *_sot6
    run; Cons@32 of MATH-500 and GPQA ("maj@32", "gpqa_maj@32_samples")."""
    return maj_at_k(block_order(answers), correct, k)


def maj_sot_at_k(answers, correct, k):
    """maj@k in round-robin tag order. MajAtKSoTsingle(k, N_sot_tags=N); Cons@32 of AIME
    ("maj_sot@32")."""
    return maj_at_k(round_robin(answers), correct, k)


CONS32_FN = {"maj_sot": maj_sot_at_k, "maj_blocks": maj_blocks_at_k}


def native_cons(answers, correct, k=1):
    """Native Cons@N: for each sample index s, the vote of the N tags' s-th answers, scored; pass@k
    over the S votes (k = 1: their mean). MajNPassAtK(k, n=N*S, N_sot_tags=N), "maj_N_pass@1:{N*S}"."""
    S = _shape(answers)
    right = _judge(correct)
    c = sum(right(vote([tag[s] for tag in answers])) for s in range(S))
    return pass_at_k(S, c, k)


def _shape(answers):
    """S, checking that every tag has S answers (the official split is even in every released task)."""
    sizes = {len(tag) for tag in answers}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"answers[i][s] needs the same number of samples for every tag, got {sorted(sizes)}")
    return sizes.pop()


def purity(tags, strategies):
    """Share of generations whose strategy is the most common one of their tag."""
    by_tag = {}
    for t, s in zip(tags, strategies):
        by_tag.setdefault(t, Counter())[s] += 1
    return sum(c.most_common(1)[0][1] for c in by_tag.values()) / max(1, len(tags))


def distinct(per_question):
    """Mean number of different (non-None) strategies in each question's list of strategies."""
    return float(np.mean([len({s for s in q if s is not None}) for q in per_question]))


def strategy_table(tags, strategies, num_tags, names):
    """Counts table[tag][strategy] with a final column for generations of no known strategy."""
    table = [[0] * (len(names) + 1) for _ in range(num_tags)]
    for t, s in zip(tags, strategies):
        table[t][names.index(s) if s in names else len(names)] += 1
    return table
