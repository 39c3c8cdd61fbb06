"""
Code problems with tests -> RL code prompts (data/prompts.py); run as `python -m data.convert code`.
Each input record is recognised by its columns; one file may hold either kind.

LiveCodeBench, livecodebench/code_generation_lite (columns and decoding as in LiveCodeBench's own
loader, lcb_runner/benchmarks/code_generation.py): question_title, question_content, platform,
question_id, contest_id, contest_date, starter_code, difficulty, public_test_cases (a JSON string:
[{"input", "output", "testtype": "stdin" | "functional"}]), private_test_cases (the same JSON, or
in later releases that JSON string pickled, zlib-compressed and base64-encoded), metadata (a JSON
string, {"func_name": ...} for LeetCode problems). The question is LiveCodeBench's generic prompt
(lcb_runner/prompts/code_generation.py), starter code and format instruction included, so scores
compare with LiveCodeBench's; tests = public + private, unchanged; id "lcb-{question_id}".
Pickle can run code while loading, so the private tests are unpickled by a loader that refuses
every class and function lookup: only plain values (the JSON string) can come out.

INTELLECT-2 RL data, PrimeIntellect/INTELLECT-2-RL-Dataset: problem_id, task_type
("prime_rl_code" or "verifiable_math"), prompt (the user turn, a string), verification_info (a JSON
string), solve_rate_qwen_r1_distill_7b. The layout of verification_info for code is taken from the
code that reads it, prime-rl's zeroband/inference/genesys/code.py and code_utils.py, not from a
data row: {"test_cases": a JSON string of {"inputs": [...], "outputs": [...], "fn_name": ...}}
(the APPS/TACO layout; fn_name is also looked for beside test_cases). With fn_name the tests are
functional: an input that is a list of arguments becomes one JSON value per line, a string is kept
(prime-rl parses it line by line); an output that is not a string is JSON-encoded. Caveat for the
grader: in the APPS layout a return value may be wrapped in a one-element list, which prime-rl's
checker also accepts. Without fn_name the tests are stdin tests; lists of lines are joined with
newlines. Records of another task_type are skipped and counted. id: the problem_id. The dataset
comes in Parquet shards: convert each and concatenate the outputs (JSONL concatenates with cat).

    python -m data.convert code code_generation_lite/test6.jsonl lcb.jsonl
    python -m pytest -q test_convert.py
"""
import base64
import io
import json
import pickle
import zlib
from collections import Counter

from data.convert.io import records, scalar, text, write_jsonl
from data.prompts import check_tests
from data.traces import DataError

WITH_STARTER = ("You will use the following starter code to write the solution to the problem and enclose "
                "your code within delimiters.")
WITHOUT_STARTER = ("Read the inputs from stdin solve the problem and write the answer to stdout (do not directly "
                   "test on the sample inputs). Enclose your code within delimiters as follows. Ensure that when "
                   "the python program runs, it reads the inputs, runs the algorithm and writes output to STDOUT.")


def convert_code(path, out):
    rows, ids, skipped = [], {}, Counter()
    for where, record in records(path):
        if "question_content" in record:
            row, id_field = lcb_prompt(record, path, where), "question_id"
        elif "verification_info" in record:
            task = record.get("task_type", "prime_rl_code")
            if task != "prime_rl_code":
                skipped[task] += 1
                continue
            row, id_field = intellect2_prompt(record, path, where), "problem_id"
        else:
            raise DataError(path, where, None, "neither a LiveCodeBench record (question_content) "
                                               "nor an INTELLECT-2 one (verification_info)")
        if row["id"] in ids:
            raise DataError(path, where, id_field, f"duplicate id {row['id']!r} (first at {ids[row['id']]})")
        ids[row["id"]] = where
        rows.append(row)
    if not rows:
        raise DataError(path, None, "task_type", f"no code problems (skipped: {dict(skipped)})")
    write_jsonl(out, rows)
    print(f"code: {len(rows)} problems -> {out}"
          + "".join(f"; skipped {k} records of task_type {t!r}" for t, k in skipped.items()))
    return rows


def lcb_question(content, starter_code):
    """LiveCodeBench's generic prompt (get_generic_question_template_answer)."""
    if starter_code:
        fmt = f"### Format: {WITH_STARTER}\n```python\n{starter_code}\n```\n\n"
    else:
        fmt = f"### Format: {WITHOUT_STARTER}\n```python\n# YOUR CODE HERE\n```\n\n"
    return f"### Question:\n{content}\n\n{fmt}### Answer: (use the provided format with backticks)\n\n"


class PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain values are expected")


def lcb_tests(record, field, path, where):
    value = record.get(field)
    if not isinstance(value, str):
        raise DataError(path, where, field, "missing" if field not in record else "must be a string")
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    try:
        blob = zlib.decompress(base64.b64decode(value, validate=True))
        return json.loads(PlainUnpickler(io.BytesIO(blob)).load())
    except Exception as e:  # a corrupt pickle can raise nearly anything; all mean the same here
        raise DataError(path, where, field, "neither JSON nor LiveCodeBench's base64+zlib+pickle "
                                            f"encoding ({type(e).__name__}: {e})") from None


def failing(path, where, tests_field, func_field):
    """A fail(field, message) for check_tests that names the input's columns, not the output's."""
    def fail(field, message):
        raise DataError(path, where, field.replace("tests", tests_field, 1).replace("func_name", func_field, 1),
                        message)
    return fail


def lcb_prompt(record, path, where):
    text(record, "question_content", path, where)  # validated; used unstripped, as LiveCodeBench does
    content = record["question_content"]
    question_id = text(record, "question_id", path, where)
    starter = record.get("starter_code")
    if not isinstance(starter, str):
        raise DataError(path, where, "starter_code",
                        "missing" if "starter_code" not in record else "must be a string")
    try:
        metadata = json.loads(record.get("metadata") or "{}")
    except (json.JSONDecodeError, TypeError):
        raise DataError(path, where, "metadata", "must be a JSON string") from None
    if not isinstance(metadata, dict):
        raise DataError(path, where, "metadata", "must hold a JSON object")
    func_name = metadata.get("func_name")
    tests = []
    for field in ("public_test_cases", "private_test_cases"):
        cases = lcb_tests(record, field, path, where)
        if cases or field == "public_test_cases":  # some problems have no private tests
            tests += check_tests(cases, func_name, failing(path, where, field, "metadata.func_name"))
    return {"id": f"lcb-{question_id}", "question": lcb_question(content, starter), "tests": tests,
            "func_name": func_name}


def json_field(value, path, where, field):
    """A JSON object stored as a JSON string (as on the hub) or already decoded."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(path, where, field, f"invalid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(value, dict):
        raise DataError(path, where, field, f"must be a JSON object, got {type(value).__name__}")
    return value


def intellect2_prompt(record, path, where):
    prompt = text(record, "prompt", path, where)
    problem_id = scalar(record.get("problem_id"))
    if problem_id is None:
        raise DataError(path, where, "problem_id", "missing, empty or not a string")
    info = json_field(record["verification_info"], path, where, "verification_info")
    cases = json_field(info.get("test_cases"), path, where, "verification_info.test_cases")
    inputs, outputs = cases.get("inputs"), cases.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise DataError(path, where, "verification_info.test_cases",
                        "needs lists 'inputs' and 'outputs' of one length")
    func_name = cases.get("fn_name", info.get("fn_name"))
    if func_name is None:
        tests = [{"input": lines(i), "output": lines(o), "testtype": "stdin"} for i, o in zip(inputs, outputs)]
    else:
        tests = [{"input": "\n".join(json.dumps(a) for a in i) if isinstance(i, list) else i,
                  "output": o if isinstance(o, str) else json.dumps(o), "testtype": "functional"}
                 for i, o in zip(inputs, outputs)]
    tests = check_tests(tests, func_name, failing(path, where, "verification_info.test_cases", "fn_name"))
    return {"id": problem_id, "question": prompt, "tests": tests, "func_name": func_name}


def lines(value):
    """A stdin test's input or output: a string, or a list of lines joined with newlines."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return value
