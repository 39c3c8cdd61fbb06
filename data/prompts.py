"""
The RL prompt format: one question per line with what a verifier needs to grade a response, used
by the GFPO trainer (gfpo.py) and by evaluation. Two kinds, told apart by which field is present:

    {"id": "dapo-0001", "question": "...", "answer": "97"}
    {"id": "lcb-0001", "question": "...", "func_name": "maxScore",
     "tests": [{"input": "[1, 2]\\n3", "output": "5", "testtype": "functional"}, ...]}

- math: `answer` is the gold answer (a string or a number, stored as a string) for rewards.grade_math.
- code: `tests` is a non-empty list of LiveCodeBench-style tests. `testtype` "stdin" feeds `input`
  to the program's standard input and compares its standard output with `output`; "functional"
  calls `func_name` (a method of `class Solution` or a top-level function) with the arguments in
  `input`, one JSON value per line, and compares the return value with the JSON value `output`.
  `func_name` is required exactly when the tests are functional; one prompt's tests are all of one
  type, as in LiveCodeBench, because the grader runs the program one way or the other.

Exactly one of `answer` and `tests` per line. `id` is optional (default `line{n}`) and unique.
`question` is the whole user turn of a code prompt: any instructions (starter code, input format)
are part of it. A math question is asked inside MATH_PROMPT, the authors' instruction; a benchmark
file may name it `problem` (AIME, MATH-500) instead of `question`. This is the one reader of the
format, for evaluation benchmarks and RL prompts alike. Bad input raises DataError naming the file,
the line and the field, as load_traces does.

    python -m pytest -q test_convert.py
"""
from dataclasses import dataclass

from data.traces import DataError, load_records

TEST_TYPES = ("stdin", "functional")
# The math prompt of the authors' evaluation (LightEval's AIME/MATH-500 tasks).
MATH_PROMPT = ("Solve the following math problem efficiently and clearly.  The last line of your response "
               "should be of the following format: 'Therefore, the final answer is: $\\boxed{{ANSWER}}$. "
               "I hope it is correct' (without quotes) where ANSWER is just the final number or expression "
               "that solves the problem. Think step by step before answering.\n\n{question}")


@dataclass
class Prompt:
    id: str
    question: str
    answer: str = None
    tests: list = None  # [{"input": str, "output": str, "testtype": "stdin" | "functional"}, ...]
    func_name: str = None

    @property
    def kind(self):
        return "math" if self.tests is None else "code"


def load_prompts(path):
    """Read and validate an RL prompt JSONL file into a list of Prompts."""
    return load_records(path, _prompt, "prompts")


def check_tests(tests, func_name, fail):
    """Validate code tests and their func_name; fail(field, message) raises. Shared with the
    converters, which call it with their input's field names. Returns the tests as plain dicts."""
    if not isinstance(tests, list) or not tests:
        fail("tests", "must be a non-empty list of tests")
    clean = []
    for i, test in enumerate(tests):
        if not isinstance(test, dict):
            fail(f"tests[{i}]", f"must be an object with input, output and testtype, got {type(test).__name__}")
        for key in ("input", "output"):
            if not isinstance(test.get(key), str):
                fail(f"tests[{i}].{key}", "missing" if key not in test else "must be a string")
        if test.get("testtype") not in TEST_TYPES:
            fail(f"tests[{i}].testtype", f"must be 'stdin' or 'functional', got {test.get('testtype')!r}")
        if test["testtype"] != tests[0]["testtype"]:
            fail(f"tests[{i}].testtype", f"is {test['testtype']!r} but tests[0] is {tests[0]['testtype']!r}; "
                                         "one prompt's tests are all stdin or all functional")
        clean.append({"input": test["input"], "output": test["output"], "testtype": test["testtype"]})
    functional = clean[0]["testtype"] == "functional"
    if functional and func_name is None:
        fail("func_name", "missing (the tests are functional: which function do they call?)")
    if func_name is not None:
        if not functional:
            fail("func_name", "given but the tests are stdin tests")
        if not isinstance(func_name, str) or not func_name.isidentifier():
            fail("func_name", f"must be a Python identifier, got {func_name!r}")
    return clean


def _prompt(obj, path, n):
    def fail(field, message):
        raise DataError(path, n, field, message)

    if not isinstance(obj, dict):
        fail(None, f"expected a JSON object, got {type(obj).__name__}")
    key = "question" if "question" in obj or "problem" not in obj else "problem"
    question = obj.get(key)
    if key not in obj:
        fail("question", "missing")
    if not isinstance(question, str) or not question.strip():
        fail(key, "must be a non-empty string")
    has_answer, has_tests = "answer" in obj, "tests" in obj
    if has_answer and has_tests:
        fail("tests", "given together with 'answer': a prompt is either math (answer) or code (tests)")
    if not has_answer and not has_tests:
        fail("answer", "missing: a prompt needs 'answer' (math) or 'tests' (code)")
    answer = tests = None
    if has_answer:
        answer = obj["answer"]
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            fail("answer", f"must be a string or a number, got {type(answer).__name__}")
        answer = str(answer)
        if not answer.strip():
            fail("answer", "is empty")
        if "func_name" in obj:
            fail("func_name", "given for a math prompt (func_name goes with functional tests)")
    else:
        tests = check_tests(obj["tests"], obj.get("func_name"), fail)
    prompt_id = obj.get("id", f"line{n}")
    if not isinstance(prompt_id, (str, int)) or isinstance(prompt_id, bool):
        fail("id", "must be a string or an integer")
    return Prompt(str(prompt_id), question, answer, tests, obj.get("func_name"))
