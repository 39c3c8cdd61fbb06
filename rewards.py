"""Verifiable rewards: math answer equivalence, and LiveCodeBench tests run in the sandbox.

grade_math(response, gold) -> bool is Hugging Face's math-verify (what the paper's LightEval scoring
calls; pinned in requirements.txt) used as its authors do: parse() both strings with the default
targets (LaTeX, then plain expressions), then verify(gold, answer). First found wins: "final answer
is X. I hope"; "final answer is X" or the last \\boxed{X}, whichever is later; "answer: X"; the last
LaTeX or number. Equal when sympy says so: (x+1)^2 = x^2+2x+1, 070 = 70, 1{,}000 = 1000, 50\\% = 50,
a decimal and an exact value to 6 places (0.333333 = 1/3), intervals, sets, ordered tuples,
matrices, "x = 5" against 5; \\text{}, \\left, units and degrees are dropped. Refused: another
number or sign, (1,2) for [1,2], 1.4142 for \\sqrt2, 3 for \\pi, nothing to extract, a right answer
followed by a different final one. Boxed answers a few words apart with a separator
("\\boxed{3}, \\boxed{5}") are one answer, {3, 5}. A gold with LaTeX delimiters or \\boxed (a MATH
solution) is parsed as it is, a bare one ("70", "\\frac{14}{3}", "-2,1") as \\boxed{gold}. Time
limit: math-verify's uses signal.alarm, which works only in the main thread and cannot stop a long
C call, so grading runs in helper processes (this file with --math-worker; one per calling thread,
reused): a timer there turns a slow case into False; a helper silent for timeout_s + 2 s is killed
and replaced. For majority votes, extract_math(response) and parse_gold(gold) give MathAnswers,
equal (==) when math-verify parsed them to the same sympy structure, as the official votes compare
answers (so 1/2 and 0.5 are two candidates), and math_equal(gold, answer) grades one.

run_program(source, stdin) -> RunResult runs a Python program in the sandbox: sandbox.py, where its
mechanisms (namespaces, a read-only filesystem, rlimits) and its threat model are described. It
is re-exported here, so `from rewards import run_program` works.

grade_code(source, tests, func_name) follows LiveCodeBench (livecodebench/code_generation_lite):
tests are {"input", "output", "testtype": "stdin" | "functional"}; the program gets LCB's import
prelude; stdin tests compare whitespace-stripped lines as text or as Decimals; functional tests
call Solution().func_name (or a top-level function) on the input's JSON lines and compare the JSON
result with == (tuples count as lists: LCB converts the outer one, JSON also inner ones). One
sandboxed run per test (LCB's 6 s limit), stopping at the first failure. extract_code(response)
takes the code out of a response as LCB does: the last ``` fenced block.

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
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from sandbox import RunResult, run_program  # noqa: F401  (part of this module's interface)

_THIS = os.path.abspath(__file__)

# ----------------------------------------------------------------------------------------- math
_math_idle = []  # idle grading helpers (Popen), reused by whichever thread calls next
_math_lock = threading.Lock()
_DELIMITED = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed|\\fbox")  # math mode in a gold string
os.register_at_fork(after_in_child=_math_idle.clear)  # a fork must not share our helpers' pipes


def grade_math(response: str, gold: str, timeout_s: float = 5.0) -> bool:
    """True when the final answer of `response` equals `gold` (see the module docstring)."""
    return _ask("grade", response, gold, timeout_s, False)


@dataclass(frozen=True)
class MathAnswer:
    """An extracted answer or gold. == compares what math-verify parsed, as sympy's structural ==
    (the official majority votes compare extractions so); math_equal() grades it against a gold."""
    key: tuple  # sympy.srepr of each parsed item
    text: str = field(compare=False, repr=False)  # what it was parsed from, to grade it


def parse_gold(gold: str, timeout_s: float = 5.0) -> MathAnswer:
    """A gold answer as a MathAnswer, read as grade_math reads it."""
    return MathAnswer(tuple(_ask("gold", str(gold), "", timeout_s, [])), str(gold))


def extract_math(response: str, timeout_s: float = 5.0):
    """The response's final answer as a MathAnswer, or None when nothing parses."""
    key = tuple(_ask("extract", response, "", timeout_s, []))
    return MathAnswer(key, response) if key else None


def math_equal(gold: MathAnswer, answer: MathAnswer, timeout_s: float = 5.0) -> bool:
    """grade_math of the response `answer` came from against the gold `gold` came from."""
    return _ask("grade", answer.text, gold.text, timeout_s, False)


def _ask(op, text, gold, timeout_s, default):
    """One request to an idle helper (started if none is); `default` if it fails or times out."""
    if not isinstance(text, str) or not isinstance(gold, (str, int, float)):
        raise TypeError(f"math grading wants strings, got {type(text)} and {type(gold)}")
    with _math_lock:
        helper = _math_idle.pop() if _math_idle else None
    if helper is None:
        helper = subprocess.Popen([sys.executable, _THIS, "--math-worker"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, bufsize=0)
        if helper.stdout.readline() != b"ready\n":
            raise RuntimeError("the math grading helper did not start: is math-verify installed?")
    request = memoryview(json.dumps([op, text, str(gold), timeout_s]).encode() + b"\n")
    reply, deadline = b"", time.monotonic() + timeout_s + 2.0
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
    helper.kill()  # stuck where its own timer cannot reach (a long C call), or dead
    helper.wait()
    return default


class _Timeout(BaseException):  # not an Exception: math-verify catches those
    pass


def _math_worker():
    import logging

    from math_verify import parse, verify
    from sympy import srepr
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # we time out; it need not warn
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints from libraries go to stderr, not into the replies
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # sympy blow-ups: MemoryError

    def on_alarm(signum, frame):
        raise _Timeout

    @functools.lru_cache(maxsize=4096)  # the same gold is graded against every rollout
    def parse_gold(gold):
        delimited = _DELIMITED.search(gold)  # r"\$18.90" is a bare answer, not math mode
        return parse(gold if delimited else "\\boxed{" + gold + "}", parsing_timeout=None)

    @functools.lru_cache(maxsize=256)  # extract_math, then math_equal on the same response
    def parse_response(text):
        return parse(text, parsing_timeout=None)

    signal.signal(signal.SIGALRM, on_alarm)
    reply.write("ready\n")
    reply.flush()
    for line in sys.stdin:
        op, text, gold, timeout_s = json.loads(line)
        result = False if op == "grade" else []
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
            try:
                if op == "grade":
                    result = verify(parse_gold(gold.strip()), parse_response(text),
                                    timeout_seconds=None)
                else:
                    parsed = parse_gold(text.strip()) if op == "gold" else parse_response(text)
                    result = [srepr(item) for item in parsed]
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Timeout:
            pass
        reply.write(json.dumps(result) + "\n")
        reply.flush()



# ----------------------------------------------------------------------------------------- code
# LiveCodeBench runs every solution after these imports (lcb_runner/evaluation/testing_util.py).
_LCB_MODULES = ("string re datetime collections heapq bisect copy math random statistics "
                "itertools functools operator io sys json").split()
_LCB_PRELUDE = ("".join(f"from {m} import *\n" for m in (*_LCB_MODULES, "builtins", "typing"))
                + "".join(f"import {m}\n" for m in _LCB_MODULES) + "sys.setrecursionlimit(50000)\n")
# Functional tests: call the function on the JSON arguments, print the JSON result on the last line.
_CALL = """
import contextlib as _cl, io as _io, json as _js, sys as _sy
_args = [_js.loads(_l) for _l in _sy.stdin.read().split("\\n")]
with _cl.redirect_stdout(_io.StringIO()):
    _r = {call}(*_args)
_sy.stdout.write("\\n" + _js.dumps(list(_r) if isinstance(_r, tuple) else _r))
"""


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
    """Run LiveCodeBench-style tests one by one in the sandbox; passed only if all pass."""
    results = []
    for i, test in enumerate(tests):
        functional = test["testtype"] == "functional"
        if functional and not func_name:
            raise ValueError(f"test {i} is functional: grade_code needs func_name")
        if test["testtype"] not in ("stdin", "functional"):
            raise ValueError(f"test {i}: unknown testtype {test['testtype']!r}")
        call = f"Solution().{func_name}" if "class Solution" in source else func_name
        program = _LCB_PRELUDE + source + ("\n" + _CALL.format(call=call) if functional else "")
        run = run_program(program, test["input"], timeout_s=timeout_s, **limits)
        if run.status != "ok":
            results.append(run.status)
            return CodeGrade(False, results, f"test {i}: {run.status}: {run.stderr[-2000:]}")
        try:
            right = (json.loads(run.stdout.rsplit("\n", 1)[-1]) == json.loads(test["output"])
                     if functional else _same_lines(run.stdout, test["output"]))
        except ValueError:  # not JSON
            right = False
        results.append("pass" if right else "wrong_answer")
        if not right:
            return CodeGrade(False, results, f"test {i}: wrong answer: {run.stdout[:500]!r}")
    return CodeGrade(True, results)


def _same_lines(got, expected):
    """LiveCodeBench: as many stripped lines, each equal as text or as a list of Decimals."""
    def decimals(line):
        with contextlib.suppress(InvalidOperation):
            return [Decimal(x) for x in line.split()]

    got, expected = ([line.strip() for line in s.strip().split("\n")] for s in (got, expected))
    return len(got) == len(expected) and all(a == b or None != decimals(a) == decimals(b)
                                             for a, b in zip(got, expected))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--math-worker"]:
        _math_worker()
    else:
        sys.exit("rewards.py is a library; --math-worker is its helper")
