"""
The RL prompt format: one question per line with what a verifier needs to grade a response, used
by the GFPO trainer (gfpo.py) and by evaluation. Three kinds, told apart by which fields are present:

    {"id": "dapo-0001", "question": "...", "answer": "97"}
    {"id": "lcb-0001", "question": "...", "func_name": "maxScore",
     "tests": [{"input": "[1, 2]\\n3", "output": "5", "testtype": "functional"}, ...]}
    {"id": "recA1b2C3", "question": "...", "choices": ["...", "...", "...", "..."], "answer": "C"}

- math: `answer` is the gold answer (a string or a number, stored as a string) for rewards.grade_math.
  An optional `solution` (a worked solution ending in \\boxed{answer}, as MATH-500 has) is kept:
  the official MATH-500 task grades against it (tasks.MathTask).
- code: `tests` is a non-empty list of LiveCodeBench-style tests. `testtype` "stdin" feeds `input`
  to the program's standard input and compares its standard output with `output`; "functional"
  calls `func_name` (a method of `class Solution` or a top-level function) with the arguments in
  `input`, one JSON value per line, and compares the return value with the JSON value `output`.
  `func_name` is required exactly when the tests are functional; one prompt's tests are all of one
  type, as in LiveCodeBench, because the grader runs the program one way or the other.
- choice (GPQA): `choices` is exactly four non-empty strings, shown as A) to D) in that order, and
  `answer` the letter of the right one, "A" to "D". Choices are kept as given, unstripped, as the
  official prompt shows them.

Exactly one of `answer` and `tests` per line; `choices` goes with `answer`. `id` is optional
(default `line{n}`) and unique. `question` is the whole user turn of a code prompt: any
instructions (starter code, input format) are part of it. A math question is asked inside
MATH_PROMPT and a choice question inside GPQA_PROMPT, the official evaluation's instructions; a
benchmark file may name it `problem` (AIME, MATH-500) instead of `question`. This is the one reader
of the format, for evaluation benchmarks and RL prompts alike. Bad input raises DataError naming
the file, the line and the field, as load_traces does.

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
# The multiple-choice prompt of the authors' evaluation (LightEval's gpqa_instruct, from simple-evals).
GPQA_PROMPT = ("Answer the following multiple choice question. The last line of your response should be of the "
               "following format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by "
               "step before answering.\n\n{question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}")
LETTERS = ("A", "B", "C", "D")  # the letters of a choice prompt's four choices, in order


@dataclass
class Prompt:
    id: str
    question: str
    answer: str = None
    tests: list = None  # [{"input": str, "output": str, "testtype": "stdin" | "functional"}, ...]
    func_name: str = None
    choices: list = None  # four strings, the choices A to D; answer is the right one's letter
    solution: str = None  # math: a worked solution, where the file has one

    @property
    def kind(self):
        return "code" if self.tests is not None else "choice" if self.choices is not None else "math"


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
    if "choices" in obj and has_tests:
        fail("choices", "given together with 'tests': a code prompt has no choices")
    if has_answer and has_tests:
        fail("tests", "given together with 'answer': a prompt is either math (answer) or code (tests)")
    if not has_answer and not has_tests:
        fail("answer", "missing: a prompt needs 'answer' (math or choice) or 'tests' (code)")
    answer = tests = choices = None
    if has_tests:
        tests = check_tests(obj["tests"], obj.get("func_name"), fail)
    else:
        if "func_name" in obj:
            kind = "choice" if "choices" in obj else "math"
            fail("func_name", f"given for a {kind} prompt (func_name goes with functional tests)")
        if "choices" in obj:
            choices, answer = _check_choices(obj["choices"], obj["answer"], fail)
        else:
            answer = obj["answer"]
            if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
                fail("answer", f"must be a string or a number, got {type(answer).__name__}")
            answer = str(answer)
            if not answer.strip():
                fail("answer", "is empty")
            if "solution" in obj and (not isinstance(obj["solution"], str) or not obj["solution"].strip()):
                fail("solution", "must be a non-empty string when given")
    prompt_id = obj.get("id", f"line{n}")
    if not isinstance(prompt_id, (str, int)) or isinstance(prompt_id, bool):
        fail("id", "must be a string or an integer")
    solution = obj.get("solution") if answer is not None and choices is None else None
    return Prompt(str(prompt_id), question, answer, tests, obj.get("func_name"), choices, solution)


def _check_choices(choices, answer, fail):
    """Validate a choice prompt's four choices and its answer letter; fail(field, message) raises."""
    if not isinstance(choices, list) or len(choices) != len(LETTERS):
        fail("choices", f"must be a list of {len(LETTERS)} choices (A to D)")
    for i, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice.strip():
            fail(f"choices[{i}]", "must be a non-empty string")
    if not isinstance(answer, str) or answer not in LETTERS:
        fail("answer", f"must be the letter of the right choice, one of {', '.join(LETTERS)}; got {answer!r}")
    return choices, answer
