"""
The multi-trace JSONL format: one question per line, several full assistant responses per question.

    {"id": "s1k-0001", "question": "...", "traces": ["...", "..."], "answer": "97",
     "sources": ["gpt-oss-high", "deepseek-r1"]}

`question` and `traces` are required (traces: a list of non-empty strings); `id` defaults to the
line number, `answer` (string or number) is needed only for evaluation and RL, `sources` (one
name per trace) only for statistics such as which tag each teacher lands on.

Bad input raises DataError naming the file, the line and the field; nothing is skipped silently.

    python -m pytest -q test_data.py
"""
import json
import re
from dataclasses import dataclass

# Anything that would read as a forking tag or a chat-template marker inside a trace would corrupt
# the training sequence, whose tag and template are added by data.chat.
RESERVED = re.compile(r"<think\d*>|<\|im_start\|>|<\|im_end\|>|<\|endoftext\|>")


@dataclass
class Example:
    id: str
    question: str
    traces: list
    answer: str = None
    sources: list = None


class DataError(ValueError):
    def __init__(self, path, line, field, message):
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {'field ' + repr(field) + ': ' if field else ''}{message}")


def load_traces(path, num_traces=None, allow_fewer=False):
    """Read and validate a multi-trace JSONL file into a list of Examples.

    num_traces: keep the first num_traces traces of each question; a question with fewer is an
    error unless allow_fewer, in which case it trains on what it has.
    """
    return load_records(path, lambda obj, path, n: _example(obj, path, n, num_traces, allow_fewer), "examples")


def load_records(path, parse, what):
    """Every line of a JSONL file through parse(obj, path, line) into records with an `id`; a
    duplicate id and an empty file are errors naming the line. Shared with the RL prompt files."""
    records, seen = [], {}
    for n, obj in read_jsonl(path):
        record = parse(obj, path, n)
        if record.id in seen:
            raise DataError(path, n, "id", f"duplicate id {record.id!r} (first on line {seen[record.id]})")
        seen[record.id] = n
        records.append(record)
    if not records:
        raise DataError(path, None, None, f"no {what} (the file is empty)")
    return records


def read_jsonl(path):
    """Yield (line number, parsed value) for each non-blank line of a JSONL file. An unreadable file,
    non-UTF-8 bytes or invalid JSON raise DataError naming the line; shared by every JSONL loader."""
    try:
        with open(path, "rb") as f:
            raw_lines = f.read().split(b"\n")
    except OSError as e:
        raise DataError(path, None, None, f"cannot read ({e.strerror})") from None
    for n, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(path, n, None, f"not valid UTF-8 (byte {e.start} of the line)") from None
        if not line.strip():
            continue  # blank lines (e.g. the trailing newline) are not records
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, n, None, f"invalid JSON ({e.msg}, column {e.colno})") from None
        yield n, obj


def _example(obj, path, n, num_traces, allow_fewer):
    def fail(field, message):
        raise DataError(path, n, field, message)

    if not isinstance(obj, dict):
        fail(None, f"expected a JSON object, got {type(obj).__name__}")
    for field in ("question", "traces"):
        if field not in obj:
            fail(field, "missing")
    question, traces = obj["question"], obj["traces"]
    if not isinstance(question, str) or not question.strip():
        fail("question", "must be a non-empty string")
    if not isinstance(traces, list) or not traces:
        fail("traces", "must be a non-empty list of strings")
    for i, trace in enumerate(traces):
        if not isinstance(trace, str):
            fail(f"traces[{i}]", f"must be a string, got {type(trace).__name__}")
        if not trace.strip():
            fail(f"traces[{i}]", "is empty")
        if m := RESERVED.search(trace):
            fail(f"traces[{i}]", f"contains the reserved string {m.group()!r} at character {m.start()}")
    if num_traces is not None and len(traces) < num_traces and not allow_fewer:
        fail("traces", f"has {len(traces)} traces, fewer than --traces {num_traces} "
                       "(pass --allow-fewer to train on what is there)")
    sources = obj.get("sources")
    if sources is not None:
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            fail("sources", "must be a list of strings")
        if len(sources) != len(traces):
            fail("sources", f"has {len(sources)} names for {len(traces)} traces")
    answer = obj.get("answer")
    if answer is not None:
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            fail("answer", f"must be a string or a number, got {type(answer).__name__}")
        answer = str(answer)
    ex_id = obj.get("id", f"line{n}")
    if not isinstance(ex_id, (str, int)) or isinstance(ex_id, bool):
        fail("id", "must be a string or an integer")
    keep = slice(num_traces)
    return Example(str(ex_id), question, traces[keep], answer, sources[keep] if sources else None)
