"""
tasks.py: the one interface of a benchmark. Each task's grade equals right(extract(.)) on
responses right, wrong and without an answer; benchmark and prompt files are read by the one
loader of the format (the real AIME and MATH-500 files, which name the question `problem`); a
response without a code block is wrong without being run; a file mixing kinds is refused. GPQA's
letter extraction gives the letter that the official (LightEval) extraction gives on hostile
responses, and its questions are the official prompt.

    python -m pytest -q test_tasks.py
"""
import json
from collections import Counter

import pytest

import metrics
from conftest import ROOT
from data import DataError
from data.prompts import MATH_PROMPT
from data.synthetic import STRATEGIES, make_examples, solve
from tasks import CodeTask, GPQATask, MathTask, SyntheticTask, choice_letter, load_task

SHARED = ROOT.parent / "shared" / "data"
ADD = "```python\nclass Solution:\n    def add(self, a, b):\n        return a {} b\n```"


def test_synthetic_task_grades_the_last_answer():
    examples = make_examples(3, seed=5)
    task = SyntheticTask(examples)
    gold = examples[0].answer
    for response, right in [(f"{task.strategies[0]} steps answer {gold}", True),
                            (f"count answer {gold}0", False),
                            (f"answer 1 then answer {gold}", True),  # the last answer counts
                            (f"answer {gold} then answer 1", False),
                            ("no answer at all", False), ("", False)]:
        assert task.grade(response, 0) == right == task.right(task.extract(response, 0), 0), response
    assert task.classify(f"{task.strategies[2]} 1 2 3") == task.strategies[2] and task.classify("sorted: 1") is None
    assert task.gold(0) == gold and task.samples == 4 and task.pass_samples == 8


def test_synthetic_short_counts_only_the_shortest_solutions():
    short, plain = (load_task(data, train_questions=40, held_out=300) for data in ("synthetic-short", "synthetic"))
    assert (short.name, plain.name) == ("synthetic-short", "synthetic") and short.questions == plain.questions
    winners = Counter()
    for q, text in enumerate(short.questions):
        digits = text.split()[1]
        solutions = {s: solve(digits, s) for s in STRATEGIES}
        best = min(map(len, solutions.values()))
        for strategy, solution in solutions.items():
            assert plain.grade(solution, q)  # every strategy answers the plain task
            assert short.grade(solution, q) == (len(solution) == best)  # only the shortest the variant
            winners[strategy] += len(solution) == best
        padded = min(solutions.values(), key=len).replace(" answer", " so answer")  # right, but longer
        assert plain.grade(padded, q) and not short.grade(padded, q) and short.extract(padded, q) is None
    # the right strategy depends on the question: counting sort mostly, insertion sort on short ones
    assert winners["count"] > 150 and winners["insert"] > 30 and winners["smallest"] == winners["largest"] == 0


def test_synthetic_splits_are_disjoint_and_sized():
    train = load_task("synthetic", split="train", train_questions=40, held_out=7)
    held_out = load_task("synthetic", train_questions=40, held_out=7)
    assert len(train.questions) == 40 and len(held_out.questions) == 7
    assert not set(train.questions) & set(held_out.questions)


@pytest.mark.skipif(not (SHARED / "aime24.jsonl").exists(), reason="needs ../shared/data")
def test_math_tasks_read_the_benchmarks_and_name_their_protocol():
    aime, math500 = load_task(SHARED / "aime24.jsonl"), load_task(SHARED / "math500.jsonl")
    assert isinstance(aime, MathTask) and len(aime.questions) == 30 and len(math500.questions) == 500
    assert (aime.name, math500.name) == ("aime24", "math500")
    assert metrics.CONS32_VARIANT[aime.name] == "maj_sot" and metrics.CONS32_VARIANT[math500.name] == "maj_blocks"
    assert (aime.samples, math500.samples, aime.pass_samples) == (11, 6, 32)  # the official counts
    first = json.loads((SHARED / "aime24.jsonl").read_text().splitlines()[0])
    assert aime.questions[0] == MATH_PROMPT.format(question=first["problem"])  # `problem`, in the authors' prompt
    for response, right in [(r"Therefore, the final answer is: $\boxed{204}$. I hope it is correct", True),
                            (r"\boxed{205}", False), ("no answer here", False), ("The answer is 204", True)]:
        assert aime.grade(response, 0) == right == aime.right(aime.extract(response, 0), 0), response
    assert aime.extract("The answer is 070", 0) == aime.extract(r"$\boxed{70}$", 0)
    assert aime.extract("nothing", 0) is None
    # the official golds: AIME's answer, MATH-500's worked solution (its question 68: "10", the solution 10\%)
    rows = [json.loads(line) for line in (SHARED / "math500.jsonl").read_text().splitlines()]
    assert math500.answers == [r["solution"] for r in rows] and aime.answers[0] == str(first["answer"])
    assert math500.grade(r"\boxed{10\%}", 67) and not aime.grade(r"\boxed{205}", 0)


def test_code_task_grades_by_execution(tmp_path):
    path = tmp_path / "code.jsonl"
    path.write_text(json.dumps({"question": "Add two numbers.", "func_name": "add", "tests": [
        {"input": "1\n2", "output": "3", "testtype": "functional"}]}) + "\n")
    task = load_task(path)
    assert isinstance(task, CodeTask) and task.gold(0) is None and task.strategies == ()
    for response, right in [(ADD.format("+"), True), (ADD.format("-"), False), ("no code", False)]:
        assert task.grade(response, 0) == right == task.right(task.extract(response, 0), 0), response
    assert task.extract("no code", 0) is None


def test_a_response_without_code_is_never_run(tmp_path, monkeypatch):
    task = CodeTask([])
    task.tests = [([{"input": "", "output": "", "testtype": "stdin"}], None)]  # an empty program would pass
    monkeypatch.setattr(task.rewards, "grade_code", lambda *a, **k: pytest.fail("ran a response without code"))
    assert not task.grade("I would print nothing.", 0)


# The letter LightEval's extraction (lazy_indices_regex, extract_target_from_pred) reads from each
# response, as its code at the fork's commit gives it; None: it extracts nothing, and the response is wrong.
LETTER_CASES = [
    ("Answer: C", "C"),
    ("**Answer:** (C)", "C"),
    ("The final answer is B. I hope it is correct", "B"),
    ("Option A fails. B is close; C too.\nOnly D fits.\n\nAnswer: D", "D"),  # letters in the reasoning, then the answer
    ("A looks right, then (B), then C.\nThe answer is (A).", "A"),
    ("Answer: A\nWait, actually answer: B", "B"),  # the rightmost match of the best pattern
    ("Answer: (B) or maybe (C)", "B"),  # the lazy .{0,50}? stops at the first letter after "Answer:"
    ("Between A and B, I pick B\n\nAnswer: A", "A"),
    ("Thinking... so the final answer is: C", "C"),
    ("Answer: **D**", "D"),
    ("answer: D", "D"),
    ("answer: d", None),  # the letters are capitals only
    ("the answer is b", None),
    ("I cannot decide between these options.", None),
    ("", None),
    ("The answer is Alanine", "A"),  # not as a word, but the last resort takes any capital A to D
    ("Answer: Cyclohexane", "C"),
    ("DNA and RNA differ.", "A"),  # ... the rightmost one
    ("Answer: E", "A"),  # E is no choice; the last resort finds the A of "Answer"
    ("answer: e", None),
    ("ANSWER: c", "A"),
    ("Answer:\nB", "B"),  # "." stops at a newline: B is found at the start of a line
    ("A. yes\nB. no", "A"),  # the start of the response outranks the start of a line
    ("\nA. yes\nB. no", "B"),  # ... which is why a leading newline can change the letter
    ("(D)", "D"),
    ("Answer: A) 3.2 eV", "A"),
]


@pytest.mark.parametrize("text,letter", LETTER_CASES)
def test_choice_letter_is_the_official_extraction(text, letter):
    assert choice_letter(text) == letter


def test_gpqa_task_asks_the_official_prompt_and_grades_the_letter(tmp_path):
    path = tmp_path / "gpqa_diamond.jsonl"
    path.write_text(json.dumps({"id": "rec1", "question": "Which is a noble gas?", "answer": "B",
                                "choices": ["N2", " Ar", "O2", "H2\n"]}) + "\n")
    task = load_task(path)
    assert isinstance(task, GPQATask) and (task.name, task.votes) == ("gpqa", True)
    assert task.samples == metrics.SAMPLES_PER_TAG["gpqa"] == 6  # the official 36 samples = 6 tags x 6
    assert task.questions[0] == (  # LightEval's gpqa_instruct, choices as given
        "Answer the following multiple choice question. The last line of your response should be of the following "
        "format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step before "
        "answering.\n\nWhich is a noble gas?\n\nA) N2\nB)  Ar\nC) O2\nD) H2\n")
    for response, right in [("Argon is inert.\n\nAnswer: B", True), ("Answer: (B)", True), ("**Answer:** A", False),
                            ("answer: b", False), ("", False), ("The final answer is B. I hope it is correct", True)]:
        assert task.grade(response, 0) == right == task.right(task.extract(response, 0), 0), response
    assert task.extract("  Answer: B\n", 0) == "  Answer: B\n" and task.extract("", 0) == ""  # votes compare texts
    assert task.grade("\nA. yes\nB. no", 0)  # read as generated: B opens the last line (stripped, A opens the text)
    assert task.gold(0) is None and task.right(None, 0) is False
    assert CodeTask.votes is False


@pytest.mark.parametrize("lines,message", [
    ([{"question": "1+1?", "answer": "2"}, {"question": "f", "func_name": "f",
                                             "tests": [{"input": "1", "output": "1", "testtype": "functional"}]}],
     "mixes code and math prompts"),
    ([{"question": "1+1?", "answer": "2"}, {"question": "Q", "choices": ["1", "2", "3", "4"], "answer": "B"}],
     "mixes choice and math prompts"),
    ([{"problem": "1+1?"}], ":1: field 'answer': missing"),
    ([{"answer": "2"}], ":1: field 'question': missing"),
    ([{"problem": "  ", "answer": "2"}], ":1: field 'problem': must be a non-empty string"),
    ([{"question": "1+1?", "answer": ""}], ":1: field 'answer': is empty"),
    ([], "no prompts (the file is empty)"),
])
def test_bad_task_files_are_named(tmp_path, lines, message):
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(DataError) as e:
        load_task(path)
    assert str(e.value).startswith(str(path)) and message in str(e.value)
