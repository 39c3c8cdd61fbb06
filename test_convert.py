"""
data/convert/ (public.py, code.py, gpqa.py) and data/prompts.py: each converter turns a small fixture in
its dataset's real schema into a file that load_traces or load_prompts accepts, and refuses a
malformed record naming the file, the record and the field; load_prompts on good and bad files.

    python -m pytest -q test_convert.py
"""
import base64
import csv
import json
import os
import pickle
import random
import subprocess
import sys
import zlib

import pytest

from data.convert.__main__ import main
from data.convert.code import convert_code
from data.convert.gpqa import convert_gpqa
from data.convert.public import convert_dapo, convert_s1k, merge_traces
from data.prompts import LETTERS, load_prompts
from data.traces import DataError, load_traces

# --- fixtures in the datasets' own schemas (texts shortened) ---------------------------------------

S1K = [  # simplescaling/s1K-1.1
    {"solution": "97", "question": "Find the least odd prime factor of $2019^8+1$.", "cot_type": "math",
     "source_type": "qq8933/AIME_1983_2024",
     "metadata": "{'ID': '2019-I-14', 'Year': 2019, 'Problem Number': 14, 'Part': 'I'}",
     "gemini_thinking_trajectory": "We need p with 2019^16 = 1 mod p, so p = 1 mod 16.",
     "gemini_attempt": "The least such prime is $\\boxed{97}$.",
     "deepseek_thinking_trajectory": "Okay, so 2019^8 = -1 mod p means order 16 ...",
     "deepseek_attempt": "**Final Answer**\n\\boxed{97}",
     "gemini_grade": "Yes", "gemini_grade_reason": "matches", "deepseek_grade": "Yes", "deepseek_grade_reason": "ok"},
    {"solution": "Let $f(x)=x^2$. Then ... so the sum is $\\boxed{\\frac{1}{2}}$.", "question": "Compute the sum.",
     "cot_type": "math", "source_type": "AI-MO/NuminaMath-CoT/aops_forum", "metadata": "{}",
     "gemini_thinking_trajectory": "Telescoping.", "gemini_attempt": "1/2",
     "deepseek_thinking_trajectory": "Hmm, telescoping sum.", "deepseek_attempt": "$\\frac12$",
     "gemini_grade": "Yes", "gemini_grade_reason": "", "deepseek_grade": "No", "deepseek_grade_reason": ""},
    {"solution": "1. Suppose not.\n2. Then a contradiction follows.",
     "question": "Prove that there are infinitely many primes.",
     "cot_type": "math", "source_type": "AI-MO/NuminaMath-CoT/olympiads", "metadata": "{}",
     "gemini_thinking_trajectory": "Euclid.", "gemini_attempt": "Multiply them and add one.",
     "deepseek_thinking_trajectory": "Classic.", "deepseek_attempt": "Assume finitely many ...",
     "gemini_grade": "Yes", "gemini_grade_reason": "", "deepseek_grade": "Yes", "deepseek_grade_reason": ""},
]

DAPO_WRAP = ("Solve the following math problem step by step. The last line of your response should be of the "
             "form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{}\n\n"
             "Remember to put your answer on its own line after \"Answer:\".")


def dapo_row(problem, answer, index):  # BytedTsinghua-SIA/DAPO-Math-17k, verl layout
    return {"data_source": "math_dapo", "prompt": [{"content": DAPO_WRAP.format(problem), "role": "user"}],
            "ability": "MATH", "reward_model": {"ground_truth": answer, "style": "rule-lighteval/MATH_v2"},
            "extra_info": {"index": index}}


DAPO = [dapo_row("What is $3+4$?", "7", "a1b2"), dapo_row("Find $x$ if $2x=10$.", "5", "c3d4"),
        dapo_row("What is $3+4$?", "7", "e5f6")]  # the published file repeats problems


def lcb_compress(tests):  # LiveCodeBench's encoding of private tests in later releases
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


LCB_STDIN = {"question_title": "A", "question_content": "Print the sum of N integers.", "platform": "atcoder",
             "question_id": "abc301_a", "contest_id": "abc301", "contest_date": "2023-05-13T00:00:00",
             "starter_code": "", "difficulty": "easy",
             "public_test_cases": json.dumps([{"input": "3\n1 2 3\n", "output": "6\n", "testtype": "stdin"}]),
             "private_test_cases": json.dumps([{"input": "1\n5\n", "output": "5\n", "testtype": "stdin"}]),
             "metadata": "{}"}
LCB_FUNCTIONAL = {
    "question_title": "Reach End", "question_content": "Return the maximum score.", "platform": "leetcode",
    "question_id": "3282", "contest_id": "weekly-contest-414", "contest_date": "2024-09-08T00:00:00",
    "starter_code": "class Solution:\n    def findMaximumScore(self, nums: List[int]) -> int:\n        ",
    "difficulty": "medium",
    "public_test_cases": json.dumps([{"input": "[1, 3, 1, 5]", "output": "7", "testtype": "functional"}]),
    "private_test_cases": lcb_compress([{"input": "[4, 3, 1, 3, 2]", "output": "16", "testtype": "functional"}]),
    "metadata": json.dumps({"func_name": "findMaximumScore"})}


def intellect2_row(problem_id, test_cases, task_type="prime_rl_code"):  # PrimeIntellect/INTELLECT-2-RL-Dataset
    return {"problem_id": problem_id, "task_type": task_type, "prompt": f"Solve problem {problem_id}.",
            "verification_info": json.dumps({"test_cases": json.dumps(test_cases)}),
            "solve_rate_qwen_r1_distill_7b": 0.5}


INTELLECT2 = [intellect2_row("prime_rl_code_1", {"inputs": ["2\n1 2\n"], "outputs": ["3\n"]}),
              intellect2_row("prime_rl_code_2", {"fn_name": "add", "inputs": [[1, [2, 3]]], "outputs": [[3, 4]]}),
              {"problem_id": "math_1", "task_type": "verifiable_math", "prompt": "1+1?",
               "verification_info": json.dumps({"ground_truth": "2"}), "solve_rate_qwen_r1_distill_7b": 0.9}]


def gpqa_row(i, **change):  # Idavidrein/gpqa, gpqa_diamond.csv: the columns read among a few of the others
    return {"Pre-Revision Question": "old", "Question": f"Question {i}: which, of \"these\", holds?\nSecond line.",
            "Correct Answer": f"right {i}", "Incorrect Answer 1": f"wrong {i}.1",
            "Incorrect Answer 2": f" wrong {i}.2, padded\n", "Incorrect Answer 3": f"wrong {i}.3",
            "Explanation": "Because.", "Subdomain": "Chemistry (general)", "Record ID": f"rec{i:04d}x",
            "High-level domain": "Chemistry", **change}


GPQA = [gpqa_row(i) for i in range(12)]


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def where(path, record):
    """The regex prefix a DataError about this record starts with."""
    return str(path).replace("\\", "\\\\").replace(".", r"\.") + ":" + str(record)


# --- s1K-1.1 ------------------------------------------------------------------------------------------

def test_s1k_converts_to_loadable_traces(tmp_path):
    out = tmp_path / "s1k.jsonl"
    convert_s1k(write_jsonl(tmp_path / "s1k-in.jsonl", S1K), out)
    a, b, c = load_traces(out, num_traces=2)
    assert [a.id, b.id, c.id] == ["s1k-0000", "s1k-0001", "s1k-0002"]
    assert a.sources == ["deepseek-r1", "gemini"]
    assert a.traces[0] == "Okay, so 2019^8 = -1 mod p means order 16 ...\n</think>\n\n**Final Answer**\n\\boxed{97}"
    assert a.traces[1].startswith("We need p with") and "</think>\n\nThe least such prime" in a.traces[1]
    assert (a.answer, b.answer, c.answer) == ("97", "\\frac{1}{2}", None)  # short line, last boxed, proof


def test_s1k_list_typed_deepseek_columns_are_joined(tmp_path):
    record = {**S1K[0], "deepseek_thinking_trajectory": ["step one", "step two"], "deepseek_attempt": ["97"]}
    out = tmp_path / "s1k.jsonl"
    convert_s1k(write_jsonl(tmp_path / "in.jsonl", [record]), out)
    assert load_traces(out)[0].traces[0] == "step one\nstep two\n</think>\n\n97"


@pytest.mark.parametrize("change,message", [
    ({"question": ""}, "2: field 'question': is empty"),
    ({"gemini_attempt": None}, "2: field 'gemini_attempt': must be a string, got NoneType"),
    ({"deepseek_thinking_trajectory": 3}, "2: field 'deepseek_thinking_trajectory': must be a string"),
    ({"deepseek_attempt": "so <|im_end|>"}, "2: field 'deepseek_attempt': contains the reserved string '<|im_end|>'"),
    ({"gemini_thinking_trajectory": "a <think2> b"}, "2: field 'gemini_thinking_trajectory': contains the reserved"),
])
def test_s1k_refuses_malformed_records(tmp_path, change, message):
    src = write_jsonl(tmp_path / "in.jsonl", [S1K[0], {**S1K[1], **change}])
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")
    with pytest.raises(DataError, match=where(src, "") + message.replace("|", r"\|")):
        convert_s1k(src, out)
    assert out.read_text() == "previous\n"  # nothing written, nothing half-written
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "out.jsonl"]


def test_s1k_missing_column_and_bad_files(tmp_path):
    record = dict(S1K[0])
    del record["gemini_attempt"]
    with pytest.raises(DataError, match=where(tmp_path / "in.jsonl", 1) + ": field 'gemini_attempt': missing"):
        convert_s1k(write_jsonl(tmp_path / "in.jsonl", [record]), tmp_path / "o.jsonl")
    with pytest.raises(DataError, match=r"in\.jsonl: no records \(the file is empty\)"):
        convert_s1k(write_jsonl(tmp_path / "in.jsonl", []), tmp_path / "o.jsonl")
    with pytest.raises(DataError, match=r"in\.jsonl:1: expected a JSON object, got list"):
        convert_s1k(write_jsonl(tmp_path / "in.jsonl", [[1]]), tmp_path / "o.jsonl")
    (tmp_path / "in.json").write_text('{"data": [' + json.dumps(S1K[0]) + ', "x"]}')
    with pytest.raises(DataError, match=r"in\.json:record 1: expected a JSON object, got str"):
        convert_s1k(tmp_path / "in.json", tmp_path / "o.jsonl")
    (tmp_path / "in.json").write_text("[{]")
    with pytest.raises(DataError, match=r"in\.json: invalid JSON"):
        convert_s1k(tmp_path / "in.json", tmp_path / "o.jsonl")


def test_s1k_drop_reserved_flag(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{**S1K[0], "gemini_attempt": "<|im_start|>answer 97"}, S1K[1]])
    out = tmp_path / "s1k.jsonl"
    convert_s1k(src, out, drop_reserved=True)
    a, b = load_traces(out, num_traces=2, allow_fewer=True)
    assert a.sources == ["deepseek-r1"] and b.sources == ["deepseek-r1", "gemini"]


def test_s1k_json_and_parquet_give_the_same_file(tmp_path):
    reference = tmp_path / "ref.jsonl"
    convert_s1k(write_jsonl(tmp_path / "in.jsonl", S1K), reference)
    (tmp_path / "in.json").write_text(json.dumps({"data": S1K}))
    convert_s1k(tmp_path / "in.json", tmp_path / "from-json.jsonl")
    assert (tmp_path / "from-json.jsonl").read_text() == reference.read_text()
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    pq.write_table(pa.Table.from_pylist(S1K), tmp_path / "train-00000-of-00001.parquet")
    convert_s1k(tmp_path / "train-00000-of-00001.parquet", tmp_path / "from-parquet.jsonl")
    assert (tmp_path / "from-parquet.jsonl").read_text() == reference.read_text()


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # makes the import fail
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(DataError, match=r"reading \.parquet needs pyarrow \(pip install pyarrow\)"):
        convert_s1k(tmp_path / "x.parquet", tmp_path / "o.jsonl")


# --- merge ------------------------------------------------------------------------------------------

def test_merge_adds_teachers_by_id_and_by_question(tmp_path):
    base = tmp_path / "s1k.jsonl"
    convert_s1k(write_jsonl(tmp_path / "in.jsonl", S1K[:2]), base)
    oss = write_jsonl(tmp_path / "gpt-oss.jsonl", [
        {"id": "s1k-0001", "question": "ignored when matching by id", "traces": ["oss b1", "oss b2"],
         "sources": ["gpt-oss-high", "gpt-oss-medium"]},
        {"id": "s1k-0000", "question": "x", "traces": ["oss a"], "sources": ["gpt-oss-high"]}])
    claude = write_jsonl(tmp_path / "claude-opus.jsonl", [
        {"id": "c1", "question": "Find the least odd prime factor of\n$2019^8+1$. ", "traces": ["claude a"]}])
    out = tmp_path / "s1k-4.jsonl"
    merge_traces(base, [oss], tmp_path / "tmp.jsonl")
    merge_traces(tmp_path / "tmp.jsonl", [claude], out, by="question", allow_unmatched=False)
    a, b = load_traces(out)
    assert a.sources == ["deepseek-r1", "gemini", "gpt-oss-high", "claude-opus"]  # no sources: the file's name
    assert a.traces[2:] == ["oss a", "claude a"] and a.answer == "97"
    assert b.sources == ["deepseek-r1", "gemini", "gpt-oss-high", "gpt-oss-medium"]


def test_merge_unmatched_questions(tmp_path):
    base = write_jsonl(tmp_path / "base.jsonl", [{"id": "q1", "question": "Q1", "traces": ["t"]}])
    extra = write_jsonl(tmp_path / "extra.jsonl", [{"id": "q1", "question": "Q1", "traces": ["u"]},
                                                  {"id": "zz", "question": "Q9", "traces": ["v"]}])
    with pytest.raises(DataError, match=r"extra\.jsonl: field 'id': 1 questions match nothing .*'zz'"):
        merge_traces(base, [extra], tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
    merge_traces(base, [extra], tmp_path / "out.jsonl", allow_unmatched=True)
    [q] = load_traces(tmp_path / "out.jsonl")
    assert q.traces == ["t", "u"] and q.sources == ["base", "extra"]


# --- DAPO-Math-17k -------------------------------------------------------------------------------------

def test_dapo_converts_deduplicates_and_strips_the_instruction(tmp_path):
    out = tmp_path / "dapo.jsonl"
    convert_dapo(write_jsonl(tmp_path / "dapo.jsonl.in", DAPO), out)
    a, b = load_prompts(out)
    assert (a.id, a.question, a.answer, a.kind) == ("dapo-a1b2", "What is $3+4$?", "7", "math")
    assert (b.id, b.question, b.answer) == ("dapo-c3d4", "Find $x$ if $2x=10$.", "5")


def test_dapo_parquet_round_trip(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    pq.write_table(pa.Table.from_pylist(DAPO), tmp_path / "dapo-math-17k.parquet")  # nested list and structs
    convert_dapo(tmp_path / "dapo-math-17k.parquet", tmp_path / "dapo.jsonl")
    assert [p.id for p in load_prompts(tmp_path / "dapo.jsonl")] == ["dapo-a1b2", "dapo-c3d4"]


@pytest.mark.parametrize("record,message", [
    ({**DAPO[0], "prompt": "just text"}, "field 'prompt': must be a list of messages"),
    ({**DAPO[0], "prompt": [{"role": "system", "content": "hi"}]}, "field 'prompt': expected one user message"),
    ({**DAPO[0], "reward_model": {"style": "rule"}}, r"field 'reward_model\.ground_truth': missing"),
    ({**DAPO[0], "extra_info": {"index": True}}, r"field 'extra_info\.index': must be"),
    (dapo_row("What is $3+4$?", "8", "zz"),
     r"field 'reward_model\.ground_truth': '8' but the same question at 1 has '7'"),
    (dapo_row("Other", "1", "a1b2"), r"field 'extra_info\.index': id 'dapo-a1b2' already used"),
])
def test_dapo_refuses_malformed_records(tmp_path, record, message):
    src = write_jsonl(tmp_path / "in.jsonl", [DAPO[0], record])
    with pytest.raises(DataError, match=where(src, 2) + ": " + message):
        convert_dapo(src, tmp_path / "out.jsonl")


# --- code: LiveCodeBench and INTELLECT-2 -------------------------------------------------------------

def test_code_converts_livecodebench_and_intellect2(tmp_path, capsys):
    out = tmp_path / "code.jsonl"
    convert_code(write_jsonl(tmp_path / "in.jsonl", [LCB_STDIN, LCB_FUNCTIONAL] + INTELLECT2), out)
    assert "skipped 1 records of task_type 'verifiable_math'" in capsys.readouterr().out
    lcb_a, lcb_b, i2_a, i2_b = load_prompts(out)
    assert lcb_a.id == "lcb-abc301_a" and lcb_a.func_name is None and lcb_a.kind == "code"
    assert lcb_a.question.startswith("### Question:\nPrint the sum of N integers.\n\n### Format: Read the inputs")
    assert [t["input"] for t in lcb_a.tests] == ["3\n1 2 3\n", "1\n5\n"]  # public, then private
    assert lcb_b.func_name == "findMaximumScore" and "def findMaximumScore" in lcb_b.question
    assert lcb_b.tests[1] == {"input": "[4, 3, 1, 3, 2]", "output": "16", "testtype": "functional"}  # decompressed
    assert i2_a.tests == [{"input": "2\n1 2\n", "output": "3\n", "testtype": "stdin"}]
    assert i2_b.func_name == "add"  # a list of arguments becomes one JSON value per line
    assert i2_b.tests == [{"input": "1\n[2, 3]", "output": "[3, 4]", "testtype": "functional"}]


class Boom:  # a pickle that would run a command when loaded
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("record,message", [
    ({**LCB_STDIN, "private_test_cases": "%%%"}, "field 'private_test_cases': neither JSON nor"),
    ({**LCB_STDIN, "private_test_cases": base64.b64encode(zlib.compress(pickle.dumps(Boom()))).decode()},
     "field 'private_test_cases': neither JSON .*refusing to load"),
    ({**LCB_FUNCTIONAL, "metadata": "{}"}, r"field 'metadata\.func_name': missing"),
    ({**LCB_STDIN, "public_test_cases": "[]"}, "field 'public_test_cases': must be a non-empty list"),
    ({**LCB_STDIN, "public_test_cases": json.dumps([{"input": "1", "output": 1, "testtype": "stdin"}])},
     r"field 'public_test_cases\[0\]\.output': must be a string"),
    ({**LCB_STDIN, "public_test_cases": json.dumps([{"input": "1", "output": "1", "testtype": "file"}])},
     r"field 'public_test_cases\[0\]\.testtype': must be 'stdin' or 'functional'"),
    ({**LCB_STDIN, "starter_code": None}, "field 'starter_code': must be a string"),
    (intellect2_row("p", {"inputs": ["1"], "outputs": []}), r"field 'verification_info\.test_cases': needs lists"),
    ({**INTELLECT2[0], "verification_info": "{"}, r"field 'verification_info': invalid JSON"),
    ({"question": "no known columns"}, "neither a LiveCodeBench record"),
])
def test_code_refuses_malformed_records(tmp_path, record, message):
    src = write_jsonl(tmp_path / "in.jsonl", [LCB_FUNCTIONAL, record])
    with pytest.raises(DataError, match=where(src, 2) + ": " + message):
        convert_code(src, tmp_path / "out.jsonl")


# --- GPQA ---------------------------------------------------------------------------------------------

def fork_gold_indices(n):
    """What the official gpqa_instruct draws for n rows: Python's global random after lighteval's
    random.seed(1234), one randint(0, 3) per row (the state is restored for the other tests)."""
    state = random.getstate()
    random.seed(1234)
    try:
        return [random.randint(0, 3) for _ in range(n)]
    finally:
        random.setstate(state)


def test_gpqa_orders_the_choices_as_the_official_evaluation(tmp_path):
    out = tmp_path / "gpqa_diamond.jsonl"
    convert_gpqa(write_csv(tmp_path / "gpqa_diamond.csv", GPQA), out)
    prompts = load_prompts(out)
    assert "".join(p.answer for p in prompts) == "DAAAAAACBAAA"  # the first 12 draws after seed 1234
    for p, row, gold in zip(prompts, GPQA, fork_gold_indices(len(GPQA))):
        choices = [row["Incorrect Answer 1"], row["Incorrect Answer 2"], row["Incorrect Answer 3"]]
        choices.insert(gold, row["Correct Answer"])
        assert (p.id, p.kind, p.question, p.choices, p.answer) == (
            row["Record ID"], "choice", row["Question"], choices, LETTERS[gold])
    assert prompts[0].choices[1] == " wrong 0.2, padded\n"  # unstripped, as the official prompt shows it


def test_gpqa_reads_the_same_rows_from_jsonl(tmp_path):
    convert_gpqa(write_csv(tmp_path / "gpqa.csv", GPQA), tmp_path / "from-csv.jsonl")
    convert_gpqa(write_jsonl(tmp_path / "gpqa.jsonl", GPQA), tmp_path / "from-jsonl.jsonl")
    assert (tmp_path / "from-csv.jsonl").read_text() == (tmp_path / "from-jsonl.jsonl").read_text()


@pytest.mark.parametrize("rows,message", [
    ([GPQA[0], gpqa_row(1, **{"Correct Answer": " "})], "record 1: field 'Correct Answer': is empty"),
    ([GPQA[0], gpqa_row(1, **{"Question": ""})], "record 1: field 'Question': is empty"),
    ([GPQA[0], gpqa_row(1, **{"Record ID": ""})], "record 1: field 'Record ID': missing, empty"),
    ([GPQA[0], gpqa_row(1, **{"Record ID": "rec0000x"})],
     "record 1: field 'Record ID': duplicate id 'rec0000x' \\(first at record 0\\)"),
    ([{k: v for k, v in GPQA[0].items() if k != "Incorrect Answer 3"}],
     "record 0: field 'Incorrect Answer 3': missing"),
])
def test_gpqa_refuses_malformed_rows(tmp_path, rows, message):
    src = write_csv(tmp_path / "gpqa.csv", rows)
    with pytest.raises(DataError, match=where(src, "") + message):
        convert_gpqa(src, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_gpqa_bad_csv_files(tmp_path):
    src = write_csv(tmp_path / "gpqa.csv", GPQA[:2])
    src.write_text(src.read_text() + "one,field,too,many" + ",x" * len(GPQA[0]) + "\n")
    with pytest.raises(DataError, match=where(src, "record 2") + ": has 4 more fields than the header"):
        convert_gpqa(src, tmp_path / "out.jsonl")
    src.write_bytes(b"Question,Record ID\ncaf\xe9,r1\n")
    with pytest.raises(DataError, match=where(src, "") + " not valid UTF-8"):
        convert_gpqa(src, tmp_path / "out.jsonl")
    src.write_text("Question,Record ID\n")
    with pytest.raises(DataError, match=r"gpqa\.csv: no records \(the file is empty\)"):
        convert_gpqa(src, tmp_path / "out.jsonl")


# --- the RL prompt loader ------------------------------------------------------------------------------

MATH = {"id": "m1", "question": "What is 2+2?", "answer": 4}
CODE = {"id": "c1", "question": "Add.", "func_name": "add",
        "tests": [{"input": "1\n2", "output": "3", "testtype": "functional"}]}
CHOICE = {"id": "g1", "question": "Which is a noble gas?", "choices": ["N2", " Ar", "O2", "H2\n"], "answer": "B"}


def test_load_prompts_reads_every_kind(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(MATH) + "\n\n" + json.dumps(CODE) + "\n" +
                    json.dumps({"question": "Q", "tests": [{"input": "", "output": "x\n", "testtype": "stdin"}]})
                    + "\n" + json.dumps(CHOICE) + "\n")
    m, c, s, g = load_prompts(path)
    assert (m.id, m.answer, m.tests, m.choices, m.kind) == ("m1", "4", None, None, "math")
    assert (c.func_name, c.tests[0]["output"], c.choices, c.kind) == ("add", "3", None, "code")
    assert (s.id, s.func_name) == ("line4", None)
    assert (g.choices, g.answer, g.tests, g.kind) == (["N2", " Ar", "O2", "H2\n"], "B", None, "choice")  # as given


@pytest.mark.parametrize("line,message", [
    (b'{"question": "Q", "answer": "1"', "invalid JSON"),
    (b'{"question": "caf\xe9", "answer": "1"}', "not valid UTF-8"),
    (json.dumps([MATH]), "expected a JSON object, got list"),
    (json.dumps({"answer": "1"}), "field 'question': missing"),
    (json.dumps({"question": " ", "answer": "1"}), "field 'question': must be a non-empty string"),
    (json.dumps({"question": "Q"}), "field 'answer': missing: a prompt needs 'answer'"),
    (json.dumps({**MATH, "id": "m2", "tests": CODE["tests"]}), "field 'tests': given together with 'answer'"),
    (json.dumps({"question": "Q", "answer": [1]}), "field 'answer': must be a string or a number"),
    (json.dumps({"question": "Q", "answer": True}), "field 'answer': must be a string or a number"),
    (json.dumps({"question": "Q", "answer": ""}), "field 'answer': is empty"),
    (json.dumps({"question": "Q", "answer": "1", "func_name": "f"}), "field 'func_name': given for a math prompt"),
    (json.dumps({"question": "Q", "tests": []}), "field 'tests': must be a non-empty list"),
    (json.dumps({"question": "Q", "tests": ["x"]}), r"field 'tests\[0\]': must be an object"),
    (json.dumps({"question": "Q", "tests": [{"output": "1", "testtype": "stdin"}]}),
     r"field 'tests\[0\]\.input': missing"),
    (json.dumps({"question": "Q", "tests": [{"input": "1", "output": "1", "testtype": "unit"}]}),
     r"field 'tests\[0\]\.testtype': must be 'stdin' or 'functional'"),
    (json.dumps({**CODE, "id": "c2", "tests": CODE["tests"] + [{"input": "", "output": "", "testtype": "stdin"}]}),
     r"field 'tests\[1\]\.testtype': is 'stdin' but tests\[0\] is 'functional'"),
    (json.dumps({**CODE, "id": "c2", "func_name": None}), "field 'func_name': missing"),
    (json.dumps({**CODE, "id": "c2", "func_name": "not a name"}), "field 'func_name': must be a Python identifier"),
    (json.dumps({"question": "Q", "func_name": "f", "tests": [{"input": "", "output": "", "testtype": "stdin"}]}),
     "field 'func_name': given but the tests are stdin tests"),
    (json.dumps({**CHOICE, "choices": ["N2", "Ar", "O2"]}), "field 'choices': must be a list of 4 choices"),
    (json.dumps({**CHOICE, "choices": "N2 Ar O2 H2"}), "field 'choices': must be a list of 4 choices"),
    (json.dumps({**CHOICE, "choices": ["N2", "Ar", " ", "H2"]}), r"field 'choices\[2\]': must be a non-empty string"),
    (json.dumps({**CHOICE, "choices": ["N2", 18, "O2", "H2"]}), r"field 'choices\[1\]': must be a non-empty string"),
    (json.dumps({**CHOICE, "answer": "E"}), "field 'answer': must be the letter of the right choice, one of A, B"),
    (json.dumps({**CHOICE, "answer": "b"}), "field 'answer': must be the letter .*; got 'b'"),
    (json.dumps({**CHOICE, "answer": "AB"}), "field 'answer': must be the letter .*; got 'AB'"),
    (json.dumps({**CHOICE, "answer": 1}), "field 'answer': must be the letter .*; got 1"),
    (json.dumps({k: v for k, v in CHOICE.items() if k != "answer"}), "field 'answer': missing"),
    (json.dumps({**CODE, "id": "c2", "choices": CHOICE["choices"]}), "field 'choices': given together with 'tests'"),
    (json.dumps({**CHOICE, "func_name": "f"}), "field 'func_name': given for a choice prompt"),
    (json.dumps({**MATH, "id": False}), "field 'id': must be a string or an integer"),
    (json.dumps(MATH), "field 'id': duplicate id 'm1' \\(first on line 1\\)"),
])
def test_load_prompts_refuses_bad_lines(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_bytes(json.dumps(MATH).encode() + b"\n" + (line if isinstance(line, bytes) else line.encode()) + b"\n")
    with pytest.raises(DataError, match=where(path, 2) + ": " + message):
        load_prompts(path)


def test_load_prompts_empty_and_missing_files(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"e\.jsonl: no prompts \(the file is empty\)"):
        load_prompts(tmp_path / "e.jsonl")
    with pytest.raises(DataError, match=r"nope\.jsonl: cannot read"):
        load_prompts(tmp_path / "nope.jsonl")


# --- the command line ----------------------------------------------------------------------------------

def test_cli(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", DAPO)
    main(["dapo", str(src), str(tmp_path / "out.jsonl")])
    assert "3 records, 2 distinct questions (1 repeats dropped)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"error: .*in\.jsonl:1: field 'question': missing"):
        main(["s1k", str(src), str(tmp_path / "s1k.jsonl")])
    done = subprocess.run([sys.executable, "-m", "data.convert", "--help"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.abspath(__file__)))
    assert done.returncode == 0 and all(c in done.stdout for c in ("s1k", "merge", "dapo", "code", "gpqa"))
    main(["gpqa", str(write_csv(tmp_path / "gpqa.csv", GPQA[:3])), str(tmp_path / "gpqa.jsonl")])
    assert "gpqa: 3 questions" in capsys.readouterr().out and len(load_prompts(tmp_path / "gpqa.jsonl")) == 3
