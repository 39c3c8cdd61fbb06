"""Verifiable rewards: math answer equivalence, and LiveCodeBench tests run in the sandbox.

grade_math(response, gold) -> bool grades as the paper's official evaluation (the authors' LightEval
fork, Sheng-J/SSFT at 02ba191) does, with Hugging Face's math-verify (pinned in requirements.txt,
the library LightEval's extraction became) called with the fork's settings: extract from both
strings with its targets (LaTeX, plain expressions), fallback_mode="no_fallback", any match, then
compare with precision 6, strict. What is extracted, first found wins: "final answer is X. I hope";
"final answer ... is X"; the last \\boxed{X}; "answer: X"; the last LaTeX or number (the fork ranks
\\boxed after "final answer ... is", math-verify's default beside it). Equal when sympy says so:
(x+1)^2 = x^2+2x+1, 070 = 70, 1{,}000 = 1000, a decimal and an exact value to 6 places (0.333333 =
1/3), intervals, sets, ordered tuples, matrices, "x = 5" against 5; \\text{}, \\left, units and
degrees are dropped. Refused: another number or sign, (1,2) for [1,2], 1.4142 for \\sqrt2, 3 for
\\pi, nothing to extract. A gold with LaTeX delimiters or \\boxed (MATH-500's solution, which its
official task grades against) is parsed as it is, a bare one ("70", "\\frac{14}{3}") as
\\boxed{gold}. bench/official_math.py recorded the fork's own decisions on every AIME and MATH-500
gold in three spellings, and test_rewards.py holds these functions to them: all agree but one,
where math-verify 0.9 counts 10 equal to 10\\% and the fork does not.

Time limits are the fork's: 40 s per parsed expression, 3 s per comparison, by math-verify's
signal.alarm. That works only in a main thread and cannot stop a long C call, so grading runs in
helper processes (this file with --math-worker; one per calling thread, reused), and a helper
silent for timeout_s (longer than both limits together) is killed and replaced: the grade is False.
Any text is a grade, never an exception. For majority votes, extract_math(response) and
parse_gold(gold) give MathAnswers, equal exactly when the official votes count them as one
candidate (MathAnswer), and math_equal(gold, answer) grades one.

run_program(source, stdin) -> RunResult runs a Python program in the sandbox: sandbox.py, where its
mechanisms (namespaces, a read-only filesystem, rlimits) and its threat model are described. It
is re-exported here, so `from rewards import run_program` works.

grade_code(source, tests, func_name) follows LiveCodeBench (livecodebench/code_generation_lite, as
LightEval's lcb/codegen_metrics.py has it): tests are {"input", "output", "testtype": "stdin" |
"functional"}, run one per sandboxed program (LCB's 6 s), stopping at the first failure; the
program gets LCB's import prelude. stdin: it runs as a script, a SystemExit ends it like a return
(LCB catches it), and the whitespace-stripped lines must be equal as text or as Decimals.
functional: it is imported as a module (its `if __name__ == "__main__":` demo does not run), then
Solution().func_name (or the top-level function) is called on the input's JSON lines and its
result compared with == to the JSON value, as LCB compares: an outer tuple counts as a list, an
inner one does not, a numpy scalar counts as its value; exiting instead of returning, or a result
JSON cannot hold (an array, a set, an object), fails. Whatever a program prints, returns or does
is a grade, never an exception here. extract_code(response) takes the code out of a response as
LCB does: the last ``` fenced block.

Run:  python -m pytest -q test_rewards.py
      python bench/bench_rewards.py        (responses and programs graded per second)
"""
import contextlib
import functools
import json
import os
import re
import resource
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal

from sandbox import RunResult, run_program  # noqa: F401  (part of this module's interface)

_THIS = os.path.abspath(__file__)

# ----------------------------------------------------------------------------------------- math
# The fork's time limits (lighteval extractive_match_utils.extract_target_from_pred's default 40 s
# per parsed expression, math_comparison.compare_gold_target's 3 s per comparison), enforced by
# math-verify's own alarm in the helper; TIMEOUT_S, longer than both parses and the comparison,
# catches what no alarm can stop (a long C call): the helper is killed and the grade is False.
PARSE_TIMEOUT_S, COMPARE_TIMEOUT_S = 40, 3
TIMEOUT_S = 2 * PARSE_TIMEOUT_S + COMPARE_TIMEOUT_S + 5.0
_math_idle = []  # idle grading helpers (Popen), reused by whichever thread calls next
_math_lock = threading.Lock()
_DELIMITED = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed|\\fbox")  # math mode in a gold string
os.register_at_fork(after_in_child=_math_idle.clear)  # a fork must not share our helpers' pipes


def grade_math(response: str, gold: str, timeout_s: float = TIMEOUT_S) -> bool:
    """True when the final answer of `response` equals `gold` (see the module docstring)."""
    return _ask("grade", response, str(gold), timeout_s, False)


@dataclass(frozen=True)
class MathAnswer:
    """A vote candidate: exactly what the official votes compare. The fork extracts with
    fallback_mode="no_fallback", so a candidate is the list of parsed sympy objects alone (no
    fallback string: `p-q` and `p - q` are one candidate), and max(..., key=list.count) compares
    those lists with sympy's ==, which is structural (x^2+1 and 1+x^2 are two candidates, as
    are 14/3 and 4.666667). `key` is that structure, as JSON: keys are equal exactly when sympy's == is.
    A failed extraction is None, the one official failure candidate (the fork's [])."""
    key: str
    text: str = field(compare=False, repr=False)  # what it was parsed from, to grade it


def parse_gold(gold, timeout_s: float = TIMEOUT_S) -> MathAnswer:
    """A gold answer as a MathAnswer, read as grade_math reads it."""
    return MathAnswer(_ask("gold", str(gold), "", timeout_s, "[]"), str(gold))


def extract_math(response: str, timeout_s: float = TIMEOUT_S):
    """The response's final answer as a MathAnswer, or None when nothing parses."""
    key = _ask("extract", response, "", timeout_s, "[]")
    return MathAnswer(key, response) if key != "[]" else None


def math_equal(gold: MathAnswer, answer: MathAnswer, timeout_s: float = TIMEOUT_S) -> bool:
    """grade_math of the response `answer` came from against the gold `gold` came from."""
    return _ask("grade", answer.text, gold.text, timeout_s, False)


def _ask(op, text, gold, timeout_s, default):
    """One request to an idle helper (started if none is); `default` if it dies or goes silent
    for timeout_s (then it is killed: stuck where no signal reaches, e.g. a long C call)."""
    if not isinstance(text, str) or not isinstance(gold, str):
        raise TypeError(f"math grading wants strings, got {type(text)} and {type(gold)}")
    with _math_lock:
        helper = _math_idle.pop() if _math_idle else None
    if helper is None:
        helper = subprocess.Popen([sys.executable, _THIS, "--math-worker"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, bufsize=0)
        if helper.stdout.readline() != b"ready\n":
            raise RuntimeError("the math grading helper did not start: is math-verify installed?")
    request = memoryview(json.dumps([op, text, gold]).encode() + b"\n")  # ASCII: any str survives
    reply, deadline = b"", time.monotonic() + timeout_s
    with contextlib.suppress(OSError):  # a helper that died: `default`, and a new one next time
        while request:
            request = request[os.write(helper.stdin.fileno(), request):]
        while not reply.endswith(b"\n"):
            if not select.select([helper.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
                break
            chunk = os.read(helper.stdout.fileno(), 1 << 16)
            if not chunk:  # it died
                break
            reply += chunk
    if reply.endswith(b"\n"):
        with _math_lock:
            _math_idle.append(helper)
        return json.loads(reply)
    helper.kill()
    helper.wait()
    return default


def _math_worker():
    import logging

    from latex2sympy2_extended.latex2sympy2 import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    from sympy import Basic, MatrixBase
    for name in ("math_verify", "latex2sympy2_extended"):  # timeouts and deprecations: not news
        logging.getLogger(name).setLevel(logging.CRITICAL)
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints from libraries go to stderr, not into the replies
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # sympy blow-ups: MemoryError
    # The fork's extraction (extractive_match_utils.py): LaTeX and plain expressions; its LaTeX
    # defaults differ from math-verify's: \boxed at priority 55 (after "final answer ... is X", 50;
    # 50 in math-verify) and equations=True (a chain "a = b = 5" is read as its last part).
    latex = LatexExtractionConfig(boxed_match_priority=55, normalization_config=NormalizationConfig(
        basic_latex=True, units=True, malformed_operators=True, nits=True, boxed="all", equations=True))
    targets = [latex, ExprExtractionConfig()]

    @functools.lru_cache(maxsize=4096)  # the same gold is graded against every rollout
    def parse_gold(gold):
        delimited = _DELIMITED.search(gold)  # r"\$18.90" is a bare answer, not math mode
        return parse_text(gold if delimited else "\\boxed{" + gold + "}")

    @functools.lru_cache(maxsize=256)  # extract_math, then math_equal on the same response
    def parse_text(text):
        return parse(text.strip(), targets, fallback_mode="no_fallback", extraction_mode="any_match",
                     parsing_timeout=PARSE_TIMEOUT_S)

    def structure(x):  # equal exactly when sympy's == is: type and hashable content, recursively
        if isinstance(x, Basic):
            return [type(x).__name__, [structure(c) for c in x._hashable_content()]]
        if isinstance(x, MatrixBase):
            return ["Matrix", list(x.shape), [structure(c) for c in x]]
        if isinstance(x, (tuple, list)):
            return ["tuple", [structure(c) for c in x]]
        return [type(x).__name__, repr(x)]

    reply.write("ready\n")
    reply.flush()
    for line in sys.stdin:
        op, text, gold = json.loads(line)
        try:
            if op == "grade":  # the fork's compare_gold_target: precision 6, strict, 3 s
                result = verify(parse_gold(gold.strip()), parse_text(text), float_rounding=6, strict=True,
                                timeout_seconds=COMPARE_TIMEOUT_S)
            else:
                parsed = parse_gold(text.strip()) if op == "gold" else parse_text(text)
                result = json.dumps([structure(x) for x in parsed])
        except Exception:  # whatever the text: a grade, never a crash
            result = False if op == "grade" else "[]"
        reply.write(json.dumps(result) + "\n")
        reply.flush()


# ----------------------------------------------------------------------------------------- code
# LiveCodeBench runs every solution after these imports (lcb_runner/evaluation/testing_util.py).
_LCB_MODULES = ("string re datetime collections heapq bisect copy math random statistics "
                "itertools functools operator io sys json").split()
_LCB_PRELUDE = ("".join(f"from {m} import *\n" for m in (*_LCB_MODULES, "builtins", "typing"))
                + "".join(f"import {m}\n" for m in _LCB_MODULES) + "sys.setrecursionlimit(50000)\n")
# The program run for every test. LCB execs a functional solution as a module named tmp_sol, so its
# `if __name__ == "__main__":` demo does not run; a stdin program runs as a script, and LCB catches
# SystemExit there and grades the output so far. The result of a call is written after a marker
# that no program prints by chance, tagged so that the caller rebuilds it with the types LCB's ==
# sees: an inner tuple stays a tuple, a numpy scalar becomes its Python value (np.int64(3) == 3),
# anything else that JSON cannot hold (a numpy array, a set, an object) is a runtime error.
_HARNESS = """
import contextlib as _cl, io as _io, json as _js, os as _os, sys as _sy, types as _ty
_source = compile({source!r}, "solution.py", "exec")
if {func_name!r} is None:
    try:
        exec(_source, {{"__name__": "__main__", "__builtins__": __builtins__}})
    except SystemExit:
        pass
    _sy.stdout.flush()
    _os._exit(0)

def _tag(x):
    if x is None or type(x) in (bool, int, float, str):
        return x
    if type(x) is list:
        return [_tag(v) for v in x]
    if type(x) is tuple:
        return {{"tuple": [_tag(v) for v in x]}}
    if type(x) is dict:
        return {{"dict": [[_tag(k), _tag(v)] for k, v in x.items()]}}
    if type(x).__module__ == "numpy" and getattr(x, "ndim", None) == 0:
        return _tag(x.item())
    raise TypeError(f"a result of type {{type(x).__name__}} is not comparable with a JSON value")

_args = [_js.loads(_l) for _l in _sy.stdin.read().split("\\n")]
_sol = _ty.ModuleType("tmp_sol")
with _cl.redirect_stdout(_io.StringIO()):
    exec(_source, _sol.__dict__)
    _f = getattr(_sol.Solution() if {leetcode!r} else _sol, {func_name!r})
    _r = _js.dumps(_tag(_f(*_args)))
_sy.stdout.write("\\n" + {mark!r} + _r)
_sy.stdout.flush()
_os._exit(0)
"""
_MARK = "\x00ssft-result\x00"


@dataclass
class CodeGrade:
    passed: bool
    results: list  # per test run, in order: "pass", "wrong_answer" or a RunResult status
    detail: str = ""  # what went wrong in the failing test (grading stops there)


def extract_code(response: str) -> str:
    """The last ``` fenced block of a response (LiveCodeBench's rule); "" when there is none."""
    lines = response.split("\n")
    fences = [i for i, line in enumerate(lines) if "```" in line]
    return "\n".join(lines[fences[-2] + 1:fences[-1]]) if len(fences) >= 2 else ""


def grade_code(source: str, tests: list, func_name: str = None, timeout_s: float = 6.0,
               **limits) -> CodeGrade:
    """Run LiveCodeBench-style tests one by one in the sandbox; passed only if all pass. Whatever
    the program prints, returns or does is a grade, never an exception here."""
    results = []
    for i, test in enumerate(tests):
        functional = test["testtype"] == "functional"
        if functional and not func_name:
            raise ValueError(f"test {i} is functional: grade_code needs func_name")
        if test["testtype"] not in ("stdin", "functional"):
            raise ValueError(f"test {i}: unknown testtype {test['testtype']!r}")
        program = _HARNESS.format(source=_LCB_PRELUDE + source, func_name=func_name if functional else None,
                                  leetcode="class Solution" in source, mark=_MARK)  # LCB's test for a Solution
        run = run_program(program, test["input"], timeout_s=timeout_s, **limits)
        if run.status != "ok":
            results.append(run.status)
            return CodeGrade(False, results, f"test {i}: {run.status}: {run.stderr[-2000:]}")
        right = (_same_value(run.stdout, test["output"]) if functional
                 else _same_lines(run.stdout, test["output"]))
        results.append("pass" if right else "wrong_answer")
        if not right:
            return CodeGrade(False, results, f"test {i}: wrong answer: {run.stdout[:500]!r}")
    return CodeGrade(True, results)


def _same_value(stdout, expected):
    """LiveCodeBench's call-based rule: the result (an outer tuple as a list) == the JSON value."""
    last = stdout.rsplit("\n", 1)[-1]
    if not last.startswith(_MARK):
        return False  # no result: the program exited before returning
    try:
        got = json.loads(last[len(_MARK):], object_hook=_untag)
        return bool((list(got) if isinstance(got, tuple) else got) == json.loads(expected))
    except (ValueError, TypeError, KeyError, RecursionError):  # not ours, unhashable keys, too deep
        return False


def _untag(obj):
    """A tagged JSON object of the harness back to the tuple or dict it stands for."""
    (kind, value), = obj.items()
    return {"tuple": tuple, "dict": dict}[kind](value)


def _same_lines(got, expected):
    """LiveCodeBench's stdin rule: as many stripped lines, each equal as text or as a list of
    Decimals. Decimals that cannot be compared (a signalling NaN) are unequal, not an error."""
    got, expected = ([line.strip() for line in s.strip().split("\n")] for s in (got, expected))
    if len(got) != len(expected):
        return False
    for a, b in zip(got, expected):
        if a != b:
            try:
                if [Decimal(x) for x in a.split()] != [Decimal(x) for x in b.split()]:
                    return False
            except ArithmeticError:  # InvalidOperation: not a number, or a signalling NaN
                return False
    return True


if __name__ == "__main__":
    if sys.argv[1:2] == ["--math-worker"]:
        _math_worker()
    else:
        sys.exit("rewards.py is a library; --math-worker is its helper")
