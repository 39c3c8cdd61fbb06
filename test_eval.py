"""
eval.py: every metric against values computed by hand on constructed outputs, the math grader on
the real MATH-500 solutions, and the default `python ssft.py` path end to end on a small budget.

    python -m pytest -q test_eval.py
"""
import json
import math
from pathlib import Path

import pytest

import ssft
from eval import (MathTask, cons_at_k, cons_native, distinct, last_boxed, majority, normalize_math, pass_at_k,
                  purity, strategy_table)

SHARED = Path(__file__).resolve().parent.parent / "shared" / "data"


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


def test_majority_ties_go_to_the_first_seen():
    assert majority(["a", "b", "b", "a"]) == "a"
    assert majority(["b", "a", "a", "b"]) == "b"
    assert majority([None, "x", None, "y", "y"]) == "y"  # no answer is not a vote
    assert majority([None, None]) is None
    assert majority(["7"]) == "7"


def test_native_cons_votes_each_group_of_one_sample_per_tag():
    groups = [["a", "b", "b"], ["a", "a", "c"], [None, None, "c"], ["c", "a", "b"]]
    # votes: b (wrong), a (right), c (wrong), c (three-way tie: the first, c, wrong)
    assert cons_native(groups, "a") == 0.25
    assert cons_native([["b", "a", "a", "b"]], "b") == 1.0


def test_cons_at_k_reads_samples_round_robin():
    groups = [["a", "b"], ["b", "b"], ["a", "a"]]  # round-robin order: a b b b a a
    assert cons_at_k(groups, "b", 3) == 1.0  # a b b
    assert cons_at_k(groups, "a", 2) == 1.0  # a b: tie, first seen
    assert cons_at_k(groups, "a", 6) == 1.0  # a b b b a a: a 3-3 tie, a was seen first
    assert cons_at_k([["a", "b"], ["b", "b"], ["b", "a"]], "a", 6) == 0.0  # b has 4 of 6
    with pytest.raises(ValueError):
        cons_at_k(groups, "a", 7)


def test_purity_and_distinct():
    tags = [0, 0, 0, 1, 1, 2]
    strat = ["s1", "s1", "s2", None, None, "s3"]
    assert purity(tags, strat) == pytest.approx((2 + 2 + 1) / 6)  # None counts as a kind of its own
    assert purity([0, 0, 1, 1], ["a", "b", "a", "b"]) == 0.5
    assert distinct([["a", "b", None], ["a", "a", "a"], [None, None, None]]) == pytest.approx(1.0)
    assert strategy_table([0, 0, 1, 1], ["a", None, "b", "b"], 2, ["a", "b"]) == [[1, 0, 1], [0, 2, 0]]


def test_math_answers():
    assert last_boxed(r"so $\boxed{1}$ then \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert last_boxed("no box") is None
    assert last_boxed(r"\boxed{unclosed") is None
    assert normalize_math(r"\dfrac{1}{2}") == r"\frac{1}{2}" == normalize_math(r"$\frac{1}{2}$.")
    assert normalize_math("1,000") == "1000" == normalize_math("1000.0")
    assert normalize_math(r"\left( 3, \frac{\pi}{2} \right)") == r"(3,\frac{\pi}{2})"
    assert normalize_math(r"\text{(C)}") == "(C)"


@pytest.mark.skipif(not (SHARED / "math500.jsonl").exists(), reason="needs ../shared/data")
def test_math_grader_on_the_real_math500_solutions():
    """The reference solutions' last \\boxed{} graded against the answer field: a real-data check of
    the grader, which must agree on nearly all of the 500 problems."""
    rows = [json.loads(l) for l in (SHARED / "math500.jsonl").read_text().splitlines()]
    task = MathTask(SHARED / "math500.jsonl")
    agree = sum(task.answer(r["solution"]) == gold for r, (_, gold) in zip(rows, task.rows))
    assert agree == 500, agree
    assert task.answer(r"The answer is $\boxed{5}$.") != task.rows[0][1]  # a wrong answer stays wrong
    aime = MathTask(SHARED / "aime24.jsonl")
    assert len(aime.rows) == 30 and aime.rows[0][1] == "204"
    assert aime.answer(r"Therefore, the final answer is: $\boxed{204}$. I hope it is correct") == "204"


def test_default_path_end_to_end(tmp_path):
    """`python ssft.py` in miniature: train, checkpoint, evaluate, write eval.json with every key."""
    ssft.main(["--steps", "12", "--train-questions", "64", "--eval-questions", "6", "--batch", "8",
               "--out", str(tmp_path), "--model", "tiny"])
    report = json.loads((tmp_path / "eval.json").read_text())
    for key in ("pass@1", "cons@N", "purity", "distinct", "per_tag", "table", "table_greedy"):
        assert key in report
    assert len(report["per_tag"]) == 6 and report["questions"] == 6
    assert sum(map(sum, report["table"])) == 6 * 6 * report["samples_per_tag"]
    assert 0.0 <= report["purity"] <= 1.0 and 0.0 <= report["distinct"] <= 4.0
    assert (tmp_path / "checkpoint" / "model.safetensors").exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 12
