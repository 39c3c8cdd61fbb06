"""Tests for rewards.py: math grading and votes as the official evaluation casts them (held to the
decisions bench/official_math.py recorded from the authors' LightEval fork, and to sympy's ==),
code grading as LiveCodeBench grades, and a grader that turns any text or program into a grade.
The sandbox the programs run in has its own tests: test_sandbox.py.

Run: python -m pytest -q test_rewards.py
"""
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

import metrics
import rewards
from rewards import extract_code, extract_math, grade_code, grade_math, math_equal, parse_gold

MATH500 = Path(__file__).resolve().parents[1] / "shared" / "data" / "math500.jsonl"


# ------------------------------------------------------------------------------------ math
def test_math500_solutions_agree_with_their_answers():
    rows = [json.loads(line) for line in MATH500.read_text().splitlines()]
    wrong = [r["unique_id"] for r in rows if not grade_math(r["solution"], r["answer"])]
    assert len(rows) == 500 and wrong == []  # the issue asks >= 99%; math-verify 0.9.0 gets 500


@pytest.mark.parametrize("response", [
    r"\boxed{70}", r"\boxed{070}", "The answer is 70", "$70$", "The answer is 070.",
    r"Therefore, the final answer is: $\boxed{70}$. I hope it is correct", "**Answer:** 70",
    r"so we get \[ \boxed{70} \]", r"The final answer is $\boxed{70}$", "70",
])
def test_aime_answer_forms(response):
    assert grade_math(response, "70")


@pytest.mark.parametrize("response,gold", [
    (r"\boxed{\frac{1}{2}}", "0.5"),  # fraction = decimal
    (r"\boxed{0.5}", r"\frac12"),
    (r"\boxed{\dfrac{14}{3}}", r"\frac{14}{3}"),  # \dfrac and \frac
    (r"\boxed{x^2+2x+1}", "(x+1)^2"),  # symbolic equality
    (r"\boxed{(3, \pi/2)}", r"\left( 3, \frac{\pi}{2} \right)"),  # tuples, \left \right
    (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}"),  # text answers
    (r"\boxed{10\%}", "10"),  # percent (math-verify 0.9; the fork refuses it: see the test below)
    (r"\boxed{x=5}", "5"),  # an assignment against its value
    (r"\boxed{1,2}", "2,1"),  # answer lists are sets
    (r"\boxed{\{1,2\}}", "1,2"),
    (r"\boxed{\sqrt{2}/2}", r"\frac{\sqrt2}{2}"),
    (r"\boxed{x \in [2, 5)}", "[2,5)"),  # intervals
    (r"\boxed{1{,}000}", "1000"),  # thousands separators
    (r"\boxed{5\text{ cm}}", "5"),  # units
    (r"\boxed{30^\circ}", "30"),  # degrees
    (r"\boxed{\begin{pmatrix}1\\2\end{pmatrix}}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
    (r"The final answer is 70. Hmm, no: \boxed{71}", "70"),  # the fork: "final answer ... is" before \boxed
    (r"\boxed{70}", r"so the answer is $\boxed{70}$."),  # gold given as a solution text
    (r"\boxed{70}", "$70$"),
    (r"\boxed{\$18.90}", r"\$18.90"),  # an escaped dollar in a bare gold is not math mode
    (r"It costs $\$18.90$.", r"\$18.90"),
])
def test_equivalent(response, gold):
    assert grade_math(response, gold)


@pytest.mark.parametrize("response,gold", [
    (r"\boxed{71}", "70"),  # a different number
    (r"\boxed{-70}", "70"),  # the wrong sign
    (r"\boxed{-\frac{1}{2}}", r"\frac12"),
    (r"\boxed{[1,2]}", "(1,2]"),  # a different interval
    (r"\boxed{(2,5)}", "[2,5)"),
    (r"\boxed{3}", r"\pi"),  # no rounding of exact constants
    (r"\boxed{1.4142}", r"\sqrt2"),
    (r"\boxed{x^2+1}", "(x+1)^2"),
    (r"\boxed{(1,2)}", "(2,1)"),  # tuples are ordered
    (r"\boxed{\text{Carla}}", r"\text{Evelyn}"),
    ("I do not know.", "70"),  # nothing to extract
    ("", "70"),
    ("So \\boxed{70}.\n\nWait, that is wrong. Starting over, we get \\boxed{71}.", "70"),
    (r"The final answer is 70. Hmm, no: \boxed{71}", "71"),  # ... however late the \boxed comes
    (r"Therefore, the final answer is: $\boxed{71}$. I hope it is correct", "70"),
])
def test_not_equivalent(response, gold):
    assert not grade_math(response, gold)


def test_votes_and_grades_as_the_official_code_on_every_benchmark_gold():
    """Each gold of AIME 2024/2025 and MATH-500, boxed as given, without whitespace and without
    \\left/\\right: the same vote candidate as the gold, as each other, and right, exactly where
    the authors' LightEval fork says so (bench/official_math.py recorded its decisions)."""
    sys.path.insert(0, str(Path(__file__).parent / "bench"))
    from official_math import DATA, GOLD_FIELD, variants
    records = json.loads((Path(__file__).parent / "bench" / "official_math.json").read_text())
    rows = {name: [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines()]
            for name in GOLD_FIELD}
    assert len(records) == sum(map(len, rows.values())) == 560
    differ = []
    for r in records:
        row = rows[r["file"]][r["line"] - 1]
        gold = str(row[GOLD_FIELD[r["file"]]])
        responses = variants(str(row["answer"]))
        ours = [extract_math(t) for t in responses]
        got = {"same_as_gold": [a == parse_gold(gold) for a in ours],
               "same_pairs": [ours[0] == ours[1], ours[0] == ours[2], ours[1] == ours[2]],
               "right": [grade_math(t, gold) for t in responses]}
        differ += [(r["file"], r["line"], key) for key in got if got[key] != r[key]]
    # The one known difference, from the comparison and not the extraction: math-verify 0.9 counts
    # an integer equal to the same integer percent (10 = 10%), the fork's compare_gold_target does
    # not, and MATH-500's question 68 has the answer "10" but "10\\%" in its solution.
    assert differ == [("math500", 68, "right")]


NEAR_MISSES = ["1/2", "0.5", r"\frac{1}{2}", r"\frac12", "0.50", "x^2+1", "1+x^2", "(1,2)", "[1,2]", r"\{1,2\}",
               r"\{2,1\}", "1,2", "2,1", r"\sqrt{2}/2", r"\frac{\sqrt2}{2}", "x=5", "5", "y=5", r"5\%", "0.05", r"\pi",
               "3.14159", r"2\pi", r"\pi 2", "1000", "10^3", r"\begin{pmatrix}1\\2\end{pmatrix}",
               r"\begin{pmatrix}2\\1\end{pmatrix}", r"\infty", r"-\infty", r"\emptyset", r"\text{Evelyn}", "evelyn",
               "x", "X", "i", "6-5i", "-5i+6", r"\frac{-1}{2}", r"-\frac{1}{2}", "0.333333", "1/3", "2.0", "2", "(0,1]"]


def test_vote_keys_are_equal_exactly_when_sympy_says_so():
    """MathAnswer == against the official candidates' == (sympy's, on the parsed lists), for every
    pair of near misses, parsed here with the fork's settings."""
    from latex2sympy2_extended.latex2sympy2 import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse
    latex = LatexExtractionConfig(boxed_match_priority=55, normalization_config=NormalizationConfig(
        basic_latex=True, units=True, malformed_operators=True, nits=True, boxed="all", equations=True))
    texts = [rf"\boxed{{{t}}}" for t in NEAR_MISSES]
    official = [parse(t, [latex, ExprExtractionConfig()], fallback_mode="no_fallback") for t in texts]
    ours = [extract_math(t) for t in texts]
    assert all(official) and all(ours)  # every one parses
    for a in range(len(texts)):
        for b in range(len(texts)):
            assert (ours[a] == ours[b]) == (official[a] == official[b]), (texts[a], texts[b])
    assert sum(ours[a] == ours[b] for a in range(len(texts)) for b in range(a)) >= 5  # some are one candidate


def test_answers_for_majority_votes():
    gold = parse_gold(r"\frac{14}{3}")
    texts = r"so \boxed{\frac{14}{3}}", r"\boxed{\dfrac{14}{3}}", "$14/3$"
    same = [extract_math(t) for t in texts]
    assert all(a == gold and math_equal(gold, a) for a in same)
    decimal = extract_math(r"\boxed{4.666667}")  # equal in value, a different vote candidate
    assert decimal != gold and math_equal(gold, decimal)
    assert extract_math("I do not know.") is None
    assert not math_equal(gold, extract_math(r"\boxed{5}"))
    votes = [extract_math(r"\boxed{5}"), *same]
    assert max(votes, key=votes.count) == gold  # the official vote: the most common by ==
    assert parse_gold(70) == extract_math("The answer is 070")
    # The cases: one candidate however it is spaced or delimited, the fallback string gone
    for response, gold in ((r"\boxed{(3,\frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)"),
                           (r"\boxed{p-q}", "p - q"), (r"\boxed{6-5i}", "6 - 5i"), (r"\boxed{070}", "70")):
        votes = [extract_math(response)] * 3 + [extract_math(r"\boxed{1}")] * 2
        assert metrics.maj_at_k(votes, parse_gold(gold), 5) == 1.0
    split = [extract_math(r"\boxed{p-q}"), extract_math(r"so $p - q$"), extract_math(r"\boxed{q}")]
    assert metrics.vote(split) == split[0] == split[1] != split[2]
    # sympy's == is structural: the official votes keep these apart, and grade both right
    assert extract_math(r"\boxed{x^2+1}") != extract_math(r"\boxed{1+x^2}")
    assert grade_math(r"\boxed{1+x^2}", "x^2+1") and grade_math(r"\boxed{x^2+1}", "x^2+1")


def test_pathological_response_is_cut_off():
    assert grade_math("1", "1")  # a helper is running: its start-up is not timed
    start = time.monotonic()
    assert not grade_math("1 " * 200_000, "5", timeout_s=1.0)  # slow regex work: own timer
    assert time.monotonic() - start < 3.0
    assert grade_math(r"\boxed{5}", "5")  # the helper is still usable


def test_stuck_helper_is_killed_and_replaced():
    assert grade_math(r"\boxed{5}", "5")
    helper = rewards._math_idle[-1]
    os.kill(helper.pid, signal.SIGSTOP)  # as if stuck in C code that no signal interrupts
    start = time.monotonic()
    assert not grade_math(r"\boxed{5}", "5", timeout_s=0.5)
    assert time.monotonic() - start < 4.0 and helper.poll() is not None
    assert grade_math(r"\boxed{5}", "5")


def test_grading_from_threads():
    results = {}

    def work(i):
        results[i] = grade_math(rf"\boxed{{{i}}}", str(i)) and not grade_math(r"\boxed{-1}", str(i))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: True for i in range(4)}


# ----------------------------------------------------------------------------- grade_code
STDIN_TESTS = [{"input": "2 3\n", "output": "5\n", "testtype": "stdin"},
               {"input": "10 -4\n", "output": "6", "testtype": "stdin"}]


def test_grade_code_stdin():
    assert grade_code("a, b = map(int, input().split())\nprint(a + b)", STDIN_TESTS).passed
    # LiveCodeBench's prelude: deque and sys are there without an import
    lcb_style = "d = deque(map(int, sys.stdin.read().split()))\nprint(sum(d))"
    assert grade_code(lcb_style, STDIN_TESTS).passed
    wrong = grade_code("a, b = map(int, input().split())\nprint(a - b)", STDIN_TESTS)
    assert not wrong.passed and wrong.results == ["wrong_answer"]  # stops at the first failure
    slow = grade_code("while True: pass", STDIN_TESTS, timeout_s=1.0)
    assert not slow.passed and slow.results == ["timeout"]


@pytest.mark.parametrize("printed,expected,same", [
    ("5  \n", "5", True), ("1 2\n3\n", "1 2\n3", True), ("0.50\n", "0.5\n", True),
    ("1  2", "1 2", True), ("6", "5", False), ("5\n5", "5", False), ("abc", "ab c", False),
])
def test_stdin_output_comparison(printed, expected, same):
    program = f"print({printed!r}, end='')"
    test = {"input": "", "output": expected, "testtype": "stdin"}
    assert grade_code(program, [test]).passed == same


def test_grade_code_functional():
    tests = [{"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]", "testtype": "functional"},
             {"input": "[3, 3]\n6", "output": "[0, 1]", "testtype": "functional"}]
    solution = """
class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        print("debug output is ignored")
        seen = {}
        for i, x in enumerate(nums):
            if target - x in seen:
                return (seen[target - x], i)  # a tuple counts as a list, as in LiveCodeBench
            seen[x] = i
"""
    assert grade_code(solution, tests, func_name="twoSum").passed
    missing = grade_code(solution, tests, func_name="threeSum")
    assert not missing.passed and missing.results == ["runtime_error"]
    function = "def twoSum(nums, target):\n    return [0, 1]"
    assert grade_code(function, tests, func_name="twoSum").passed
    wrong = grade_code("def twoSum(nums, target):\n    return [1, 0]", tests, func_name="twoSum")
    assert not wrong.passed and wrong.results == ["wrong_answer"]
    with pytest.raises(ValueError, match="func_name"):
        grade_code(function, tests)


def test_extract_code():
    response = "Idea...\n```python\nprint(1)\n```\nBetter:\n```python\nprint(2)\n```\nDone."
    assert extract_code(response) == "print(2)"
    assert extract_code("no code") == ""


FUNCTIONAL = [{"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]", "testtype": "functional"}]


@pytest.mark.parametrize("source,passed", [
    # LiveCodeBench imports a functional solution as a module: a demo under __main__ never runs
    ("class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]\n"
     "if __name__ == '__main__':\n    print(Solution().twoSum(*eval(input())))", True),
    # its == sees the value: a numpy integer equals the int, an outer tuple counts as a list...
    ("import numpy as np\ndef twoSum(nums, target):\n    return [np.int64(0), np.int32(1)]", True),
    ("def twoSum(nums, target):\n    return (0, 1)", True),
    ("def twoSum(nums, target):\n    return [True, 1]", False),  # [True, 1] == [0, 1] is False
    # ... an inner tuple does not, nor a dict keyed by ints, a numpy array, a set or an object
    ("def twoSum(nums, target):\n    return [(0, 1)]", False),
    ("import numpy as np\ndef twoSum(nums, target):\n    return np.array([0, 1])", False),
    ("def twoSum(nums, target):\n    return {0, 1}", False),
    ("class Any:\n    def __eq__(self, other): return True\ndef twoSum(nums, target):\n    return Any()", False),
    # leaving without returning is no answer, whatever was printed before
    ("def twoSum(nums, target):\n    import sys\n    print('[0, 1]')\n    sys.exit(0)", False),
    ("print('\\n[0, 1]')\nraise SystemExit\ndef twoSum(nums, target):\n    return [0, 1]", False),
])
def test_functional_results_as_livecodebench_compares_them(source, passed):
    assert grade_code(source, FUNCTIONAL, func_name="twoSum").passed == passed


def test_functional_dicts_and_nested_values():
    tests = [{"input": "3", "output": '{"a": [1, [2, 3]], "b": null}', "testtype": "functional"}]
    assert grade_code("def f(n):\n    return {'b': None, 'a': [1, [2, n]]}", tests, func_name="f").passed
    assert not grade_code("def f(n):\n    return {'b': None, 'a': [1, (2, n)]}", tests, func_name="f").passed


@pytest.mark.parametrize("source,passed", [
    ("print(5)\nimport sys\nsys.exit(0)", True),
    ("print(5)\nexit(3)", True),  # LiveCodeBench catches SystemExit and grades what was printed
    ("import sys\nsys.exit(0)\nprint(5)", False),
    ("print(5)\nimport os\nos._exit(1)", False),  # a process that dies is a runtime error
])
def test_stdin_program_that_exits(source, passed):
    assert grade_code(source, [{"input": "", "output": "5", "testtype": "stdin"}]).passed == passed


MARK = repr(rewards._MARK)
HOSTILE_OUTPUT = [  # programs whose output, stdin or functional, must become a grade
    "import sys, os\nsys.stdout.buffer.write(os.urandom(100_000))",
    "sys.stdout.buffer.write(b'\\xff\\xfe\\xc3(\\xa0\\xa1 5\\n')",
    "print('9' * 100_000)", "print('1e999999999 -1E-999999999')",
    "print('sNaN')", "print('-sNaN 5')", "print('NaN')", "print('Infinity inf -Infinity')",
    "print('[' * 100_000)", "print('x' * 10_000_000)",
    f"print({MARK} + '[' * 100_000)", f"print({MARK} + '{{}}')", f"print({MARK} + '{{\"tuple\": 1}}')",
    f"print({MARK} + '{{\"dict\": [[[1], 2]]}}')", f"print({MARK} + '{{\"dict\": 5}}')",
    f"print({MARK} + '{{\"a\": 1, \"b\": 2}}')", f"print({MARK} + '9' * 100_000)", f"print({MARK} + 'NaN')",
]


@pytest.mark.parametrize("printing", HOSTILE_OUTPUT)
def test_grader_never_raises_on_program_output(printing):
    for testtype in ("stdin", "functional"):
        source = printing if testtype == "stdin" else f"def f(x):\n    pass\n{printing}"
        test = {"input": "5", "output": "5", "testtype": testtype}
        grade = grade_code(source, [test], func_name="f" if testtype == "functional" else None)
        assert grade.passed is False and len(grade.results) == 1


@pytest.mark.parametrize("value", ["float('nan')", "float('inf')", "10 ** 5000", "eval('[' * 50_000 + ']' * 50_000)",
                                   "'\\ud800'", "b'5'", "[[[]]] * 10 ** 6", "print"])
def test_grader_never_raises_on_returned_values(value):
    tests = [{"input": "5", "output": "5", "testtype": "functional"}]
    grade = grade_code(f"import sys\nsys.setrecursionlimit(10 ** 6)\ndef f(x):\n    return {value}", tests,
                       func_name="f")
    assert grade.passed is False and len(grade.results) == 1


FUZZ_TEXTS = [
    os.urandom(20_000).decode("utf-8", "surrogateescape"),  # invalid UTF-8 as lone surrogates
    "\\boxed{" + "9" * 100_000 + "}", r"\boxed{10^{10^{10^{10}}}}", "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    r"\boxed{NaN} or \boxed{sNaN} or $Infinity$ or \boxed{\infty}", "\x00" * 1000 + r"\boxed{5}",
    "The answer is " + "12 + 3 = 15, " * 800_000,  # 10 MB
]


@pytest.mark.parametrize("text", FUZZ_TEXTS, ids=range(len(FUZZ_TEXTS)))
def test_math_grading_never_raises(text):
    # a short backstop: what the fork's own limits would allow (40 s a parse) is cut at 3 s here
    assert grade_math(text, "5", timeout_s=3) in (True, False)
    assert extract_math(text, timeout_s=3) is None or isinstance(extract_math(text, timeout_s=3), rewards.MathAnswer)
    assert grade_math(r"\boxed{5}", text[:1000], timeout_s=3) in (True, False)  # as a gold, too
