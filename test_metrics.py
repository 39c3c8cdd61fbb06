"""
metrics.py against a transcription of the official metric classes on constructed answer sets
(failed extractions, empty completions and ties included), and against values computed by hand.

The official side runs on completion texts: a toy extraction stands in for math-verify (the last
\\boxed{x} gives [x], no box gives [], as extract_target_from_pred does), a toy grader for
compare_gold_target (case-insensitive, so that two different vote candidates can both be right, as
1/2 and 0.5 are), and a toy letter extraction for GPQA. Ours runs on the extracted answers: x, None
for a failed extraction, "" for an empty completion.

    python -m pytest -q test_metrics.py
"""
import math
import random
import re
from itertools import product

import numpy as np
import pytest

from metrics import (CONS32_FN, CONS32_VARIANT, PASS_KS, SAMPLES_PER_TAG, benchmark_of, block_order, distinct,
                     maj_at_k, maj_blocks_at_k, maj_sot_at_k, native_cons, pass_at_k, purity, round_robin,
                     strategy_table, vote)

# -------------------------------------------------------------------------------------------------
# Transcription of the official functions: Sheng-J/SSFT at commit
# 02ba191030201df09ee0b45932e3d8196104da5d, lighteval/src/lighteval/metrics/metrics_sample.py.
# Paraphrased (one function per class's compute, options as arguments); the semantics are identical.


def off_processed_pred(pred, strip, normalize):  # get_processed_pred, e.g. lines 1098-1108 (MajAtK)
    if not pred:
        return ""
    if strip:
        pred = pred.strip()
    if normalize:
        pred = normalize(pred)
    return pred


def off_processed_gold(gold, strip, normalize):  # get_processed_gold, e.g. lines 1089-1096 (MajAtK)
    if strip:
        gold = gold.strip()
    if normalize:
        gold = normalize(gold)
    return gold


def off_exact(pred, gold):  # compute_score / default_sample_scoring with type_exact_match="full"
    return 1 if gold == pred else 0


def off_codex(n, c, k):  # PassAtK.pass_at_k, lines 1995-2001 (MajNPassAtK's, 1343-1350, with n // N)
    if n - c < k:
        return 1.0
    return 1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1))


def off_pass_at_k(gold, predictions, k, n, score, strip=True, normalize=None):  # PassAtK.compute, 1935-1965
    gold = off_processed_gold(gold, strip, normalize)
    scores = [score(off_processed_pred(p, strip, normalize), gold) for p in predictions[:n]]
    return off_codex(n, scores.count(1), k)


def off_maj_at_k(gold, predictions, k, score=off_exact, strip=True, normalize=None):
    # MajAtK.compute (1067-1087; score = off_exact) and MajAtKScoringFunc.compute (1169-1190)
    gold = off_processed_gold(gold, strip, normalize)
    all_answers = [off_processed_pred(p, strip, normalize) for p in predictions[:k]]
    majority_prediction = max(all_answers, key=all_answers.count)
    return score(majority_prediction, gold)


def off_maj_n_pass_at_k(gold, predictions, k, n, N, score, strip=True, normalize=None):  # MajNPassAtK, 1273-1313
    gold = off_processed_gold(gold, strip, normalize)
    S = n // N
    all_scores = []
    for s in range(S):
        all_answers = [off_processed_pred(predictions[s + j * S], strip, normalize) for j in range(N)]
        majority_prediction = max(all_answers, key=all_answers.count)
        all_scores.append(score(majority_prediction, gold))
    return off_codex(S, all_scores.count(1), k)


def off_maj_sot(gold, predictions, k, N, strip=True, normalize=None):  # MajAtKSoTsingle.compute, 1410-1441
    gold = off_processed_gold(gold, strip, normalize)
    S = len(predictions) // N
    assert len(predictions) >= k
    global_all_answers = [off_processed_pred(predictions[s + j * S], strip, normalize)
                          for s in range(S) for j in range(N)]
    local_all_answers = global_all_answers[:k]
    majority_prediction = max(global_all_answers, key=local_all_answers.count)  # sic: max over all, count in first k
    return off_exact(majority_prediction, gold)


# Toy stand-ins for math-verify and GPQA's letter extraction, and our side's view of the same texts.

def toy_extract(text):  # extract_target_from_pred: a list of parsed targets, [] when nothing parses
    found = re.findall(r"\\boxed\{(\w*)\}", text)
    return [found[-1]] if found and found[-1] else []


def toy_grade(pred, gold):  # compare_gold_target: any pair equal; a string (e.g. "") iterates to nothing
    return any(p.lower() == g.lower() for p, g in product(pred, gold))


def letter(text):
    m = re.search(r"Answer: ([A-D])", text)
    return m.group(1) if m else None


def gpqa_score(pred, gold):  # multilingual_extractive_match_metric on the (unextracted) text
    return 1 if letter(pred) is not None and letter(pred) == gold else 0


def answer_of(text):  # ours: the extracted answer, None when extraction fails, "" for an empty completion
    return "" if text == "" else (toy_extract(text.strip()) or [None])[0]


def random_texts(rng, N, S):
    """texts[i][s]: boxed answers from a small alphabet ("a" and "A" differ as votes, not as grades),
    unboxed (failed) texts and empty completions."""
    pool = [r"so \boxed{a}", r"\boxed{A}", r"\boxed{b}", r"x \boxed{c}", "cut off", "no box at all", "", "  "]
    weights = rng.choice([[5, 1, 4, 1, 2, 1, 1, 1], [3, 2, 3, 2, 1, 1, 1, 1], [1, 0, 1, 0, 2, 0, 0, 0]])
    return [rng.choices(pool, weights, k=S) for _ in range(N)]


def random_gpqa_texts(rng, N, S):
    # Few distinct texts, so that equal texts (and ties between them) happen; trailing spaces test strip.
    pool = ["think Answer: A", "think Answer: A ", "other Answer: B", "Answer: C", "no letter", ""]
    return [rng.choices(pool, k=S) for _ in range(N)]


# -------------------------------------------------------------------------------------------------
# Ours against the transcription


@pytest.mark.parametrize("seed", range(4))
def test_math_metrics_equal_the_official_ones_on_random_answer_sets(seed):
    rng = random.Random(seed)
    for _ in range(400):
        N, S = rng.randint(1, 6), rng.randint(1, 11)
        texts = random_texts(rng, N, S)
        gold_text = rng.choice(["a", "b", "c"])
        preds = block_order(texts)  # the official prediction list
        answers = [[answer_of(t) for t in tag] for tag in texts]
        gold = toy_extract(rf"\boxed{{{gold_text}}}")[0]
        grade = lambda a, gold=gold: toy_grade([a], [gold])  # noqa: E731
        common = dict(strip=True, normalize=toy_extract)
        k = rng.randint(1, N * S)
        assert maj_blocks_at_k(answers, gold, k) == off_maj_at_k(rf"\boxed{{{gold_text}}}", preds, k, **common)
        assert maj_sot_at_k(answers, gold, k) == off_maj_sot(rf"\boxed{{{gold_text}}}", preds, k, N, **common)
        kc = rng.randint(1, S)
        assert native_cons(answers, grade, kc) == pytest.approx(
            off_maj_n_pass_at_k(rf"\boxed{{{gold_text}}}", preds, kc, N * S, N, toy_grade, **common))
        n = rng.randint(1, N * S)
        kp = rng.randint(1, n)
        c = sum(a is not None and grade(a) for a in block_order(answers)[:n])  # as eval.py counts them
        assert pass_at_k(n, c, kp) == pytest.approx(
            off_pass_at_k(rf"\boxed{{{gold_text}}}", preds, kp, n, toy_grade, **common))


@pytest.mark.parametrize("seed", range(2))
def test_gpqa_metrics_vote_on_texts_as_the_official_ones_do(seed):
    rng = random.Random(100 + seed)
    for _ in range(400):
        N, S = rng.randint(1, 6), rng.randint(1, 8)
        texts = random_gpqa_texts(rng, N, S)
        gold = rng.choice("ABCD")
        right = lambda t, gold=gold: gpqa_score(t, gold) == 1  # noqa: E731
        preds = block_order(texts)
        k = rng.randint(1, N * S)
        # gpqa_maj@k_samples: MajAtKScoringFunc, no strip; gpqa_maj_6_pass@1: MajNPassAtK, strip_strings=True
        assert maj_blocks_at_k(texts, right, k) == off_maj_at_k(gold, preds, k, score=gpqa_score, strip=False)
        stripped = [[t.strip() for t in tag] for tag in texts]
        assert native_cons(stripped, right) == pytest.approx(
            off_maj_n_pass_at_k(gold, preds, 1, N * S, N, gpqa_score, strip=True))


def test_failed_extractions_are_one_candidate_that_can_win():
    texts = [["cut"], ["off"], ["no box"], [r"\boxed{a}"], [r"\boxed{a}"], [r"\boxed{b}"]]  # six tags, S = 1
    answers = [[answer_of(t) for t in tag] for tag in texts]
    assert answers == [[None], [None], [None], ["a"], ["a"], ["b"]]
    assert vote(block_order(answers)) is None
    assert native_cons(answers, "a") == 0.0 == off_maj_n_pass_at_k(
        r"\boxed{a}", block_order(texts), 1, 6, 6, toy_grade, strip=True, normalize=toy_extract)
    assert maj_blocks_at_k(answers, "a", 6) == 0.0 == off_maj_at_k(r"\boxed{a}", block_order(texts), 6,
                                                                  normalize=toy_extract)
    assert maj_at_k([None, "a", "a"], "a", 3) == 1.0  # failures that do not win do not hurt
    assert maj_at_k([None, None], "a", 2) == 0.0 and native_cons([[None], [None]], lambda a: True) == 0.0
    assert vote(["", None, "", None]) == ""  # an empty completion is a failure of its own


def test_ties_go_to_the_first_in_order():
    assert vote(["a", "b", "b", "a"]) == "a"
    assert vote(["b", "a", "a", "b"]) == "b"
    assert vote([None, "a"]) is None and maj_at_k([None, "a"], "a", 2) == 0.0
    assert vote(["7"]) == "7"
    with pytest.raises(ValueError):
        vote([])


def test_the_two_orders_and_cons32():
    answers = [["a", "a", "x"], ["b", "b", "b"], ["c", "a", "a"]]  # answers[i][s]: N = 3 tags, S = 3
    assert block_order(answers) == ["a", "a", "x", "b", "b", "b", "c", "a", "a"]
    assert round_robin(answers) == ["a", "b", "c", "a", "b", "a", "x", "b", "a"]
    assert maj_blocks_at_k(answers, "b", 6) == 1.0  # a a x b b b: 3-2, b
    assert maj_sot_at_k(answers, "a", 6) == 1.0  # a b c a b a: 3-2, a
    assert maj_blocks_at_k(answers, "a", 4) == 1.0 and maj_sot_at_k(answers, "a", 2) == 1.0  # ties: first
    assert native_cons(answers, "a") == pytest.approx(2 / 3)  # votes a (a b c: tie), a (a b a), x (x b a: tie)
    assert native_cons(answers, "x", k=2) == pytest.approx(1 - math.comb(2, 2) / math.comb(3, 2))
    with pytest.raises(ValueError):
        maj_sot_at_k(answers, "a", 10)
    with pytest.raises(ValueError):
        native_cons([["a", "b"], ["a"]], "a")


def test_pass_at_k_matches_the_combinatorial_formula():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))  # 0.7
    assert pass_at_k(32, 5, 8) == pytest.approx(1 - math.comb(27, 8) / math.comb(32, 8))
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # pass@1 is the mean
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c < k: every draw of 3 contains a correct one
    assert pass_at_k(4, 1, 4) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
    for n, c in product(range(1, 33), range(0, 33)):
        for k in range(1, n + 1):
            if c <= n:
                assert pass_at_k(n, c, k) == pytest.approx(off_codex(n, c, k), abs=1e-12)


def test_benchmark_variants():
    assert CONS32_VARIANT == {"aime24": "maj_sot", "aime25": "maj_sot", "math500": "maj_blocks", "gpqa": "maj_blocks"}
    assert benchmark_of("../shared/data/aime24.jsonl") == "aime24" == benchmark_of("AIME_2024.jsonl")
    assert benchmark_of("aime25.jsonl") == "aime25"
    assert benchmark_of("/x/MATH-500.jsonl") == "math500" == benchmark_of("math500.jsonl")
    assert benchmark_of("gpqa_diamond.jsonl") == "gpqa"
    assert benchmark_of("synthetic") is None
    assert CONS32_FN[CONS32_VARIANT["gpqa"]] is maj_blocks_at_k and CONS32_FN[CONS32_VARIANT["aime24"]] is maj_sot_at_k
    for b, S in SAMPLES_PER_TAG.items():  # the *_sot6 runs hold at least 32 samples
        assert 6 * S >= 32 and max(PASS_KS[b]) <= 32


def test_purity_and_distinct():
    tags = [0, 0, 0, 1, 1, 2]
    strat = ["s1", "s1", "s2", None, None, "s3"]
    assert purity(tags, strat) == pytest.approx((2 + 2 + 1) / 6)  # None counts as a kind of its own
    assert purity([0, 0, 1, 1], ["a", "b", "a", "b"]) == 0.5
    assert distinct([["a", "b", None], ["a", "a", "a"], [None, None, None]]) == pytest.approx(1.0)
    assert strategy_table([0, 0, 1, 1], ["a", None, "b", "b"], 2, ["a", "b"]) == [[1, 0, 1], [0, 2, 0]]
