"""
GPQA -> multiple-choice prompts (data/prompts.py); run as `python -m data.convert gpqa`.

Input: GPQA's own CSV (gpqa_diamond.csv of the release, the file behind the Hugging Face dataset
Idavidrein/gpqa, subset gpqa_diamond, split train), or the same rows as JSON, JSONL or Parquet.
Columns read: Question, Correct Answer, Incorrect Answer 1, Incorrect Answer 2, Incorrect Answer 3
and Record ID; the many others (explanations, annotators' fields) are ignored.

The choices are ordered as the official evaluation orders them (LightEval's gpqa_instruct in the
authors' fork): per row, in file order, one draw random.randint(0, 3) from Python's random seeded
with 1234 once at the start of the run (lighteval pipeline.py, _init_random_seeds), and the correct
answer inserted at that index into the three incorrect ones, kept in column order. `answer` is the
letter at that index. The draws follow the rows, so convert the whole file in its order: a row
dropped or moved shifts the draws of every later row. This is the official order when GPQA's are
the first draws from `random` after the seed, as in a run of the one GPQA task (an assumption: a
run that built another task's prompts with `random` first would have shifted them).

The question and the choices are kept exactly as in the file, unstripped, as the official prompt
shows them (tasks.py asks the question inside GPQA_PROMPT); a blank one is an error. id: the
Record ID.

    python -m data.convert gpqa gpqa_diamond.csv gpqa_diamond.jsonl
    python -m pytest -q test_convert.py
"""
import random

from data.convert.io import records, scalar, text, write_jsonl
from data.prompts import LETTERS
from data.traces import DataError

SEED = 1234  # lighteval's pipeline seeds Python's random with 1234 before the prompts are built
INCORRECT = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def convert_gpqa(path, out):
    rng, rows, ids = random.Random(SEED), [], {}
    for where, record in records(path):
        question, correct, *incorrect = (text(record, column, path, where, strip=False)
                                         for column in ("Question", "Correct Answer") + INCORRECT)
        record_id = scalar(record.get("Record ID"))
        if record_id is None:
            raise DataError(path, where, "Record ID", "missing, empty or not a string")
        if record_id in ids:
            raise DataError(path, where, "Record ID", f"duplicate id {record_id!r} (first at {ids[record_id]})")
        ids[record_id] = where
        index = rng.randint(0, 3)  # the official draw: one per row, where the correct answer goes
        choices = incorrect[:index] + [correct] + incorrect[index:]
        rows.append({"id": record_id, "question": question, "choices": choices, "answer": LETTERS[index]})
    write_jsonl(out, rows)
    print(f"gpqa: {len(rows)} questions -> {out}")
    return rows

