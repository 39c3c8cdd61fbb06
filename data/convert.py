"""
Converters from public datasets, saved locally, to this project's formats: multi-trace JSONL for
SSFT (data/traces.py) and RL prompts for GFPO and evaluation (data/prompts.py).

    s1k    simplescaling/s1K-1.1 -> multi-trace JSONL, two traces per question (DeepSeek-R1, Gemini)
    merge  add more teachers' traces (the paper's GPT-OSS and Claude traces) to a multi-trace file
    dapo   BytedTsinghua-SIA/DAPO-Math-17k -> math prompts with answers
    code   livecodebench/code_generation_lite or PrimeIntellect/INTELLECT-2-RL-Dataset -> code
           prompts with tests (data/convert_code.py)

Inputs are local files: JSONL, JSON (a list of records or {"data": [...]}) or Parquet (the format
the Hugging Face hub serves; reading it needs the optional pyarrow). Nothing is downloaded. Every
malformed record raises DataError naming the input file, the record (JSONL: the line; JSON and
Parquet: "record i", counting from 0 like the dataset's row index) and the field. The output is
written only after the whole input converted, to a temporary file renamed into place.

s1K-1.1 columns (dataset card; simplescaling/s1 data/tokenization.py; Infini-AI-Lab/Multiverse
data/collect_1k.py): question, solution, cot_type, source_type, metadata,
gemini_thinking_trajectory, gemini_attempt, deepseek_thinking_trajectory, deepseek_attempt,
gemini_grade, deepseek_grade, ... all strings (one early revision stored the deepseek columns as
lists of strings; those are joined with newlines, as s1's tokenization.py joins its list-typed
thinking_trajectories). Each teacher's trace is one full assistant response:

    {thinking}\\n</think>\\n\\n{attempt}

s1 itself writes "<|im_start|>think\\n{thinking}\\n<|im_start|>answer\\n{attempt}", but chat-template
markers are reserved inside a trace (data/traces.py RESERVED: the forking tag and the template are
added by data/chat.py). The tag <think{i}> opens the thinking; the plain-text </think> closes it,
as in DeepSeek-R1's own output, so a reader (or budget forcing) can still find where the answer
starts. A teacher text holding a reserved string is an error naming its record and column, or with
--drop-reserved that trace is dropped and counted. `answer` comes from `solution` when it has a
clean one: its last \\boxed{...}, else the whole solution if it is a single short line (AIME,
TheoremQA); worked or proof-style solutions give no answer (counted). The grade columns are not
used: the paper's filtering of traces is unknown. id: "s1k-{row:04d}".

DAPO-Math-17k columns (dataset card; verl-format rows in several public loaders): data_source
("math_dapo"), prompt (a list of {"role", "content"} messages: one user turn), ability ("MATH"),
reward_model {"ground_truth": str, "style": "rule-lighteval/MATH_v2"}, extra_info {"index": str}.
The user turn wraps the problem in DAPO's instruction (DAPO_PREFIX ... DAPO_SUFFIX below), which is
cut off: the question is the bare problem, and the trainer adds its own instructions. The
published file repeats each problem about a hundred times (1.79M rows for ~17.9k problems), and
the repeats need not share their index, so rows are deduplicated on the question text (the count is
printed); one question with two different answers is an error. id: "dapo-{extra_info.index}" of its first row.

    python -m data.convert s1k s1K-1.1/data/train-00000-of-00001.parquet s1k.jsonl
    python -m data.convert merge s1k.jsonl gpt-oss-high.jsonl claude.jsonl s1k-4.jsonl
    python -m data.convert dapo DAPO-Math-17k/data/dapo-math-17k.parquet dapo.jsonl
    python -m data.convert code code_generation_lite/test6.jsonl lcb.jsonl
    python -m pytest -q test_convert.py
"""
import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict

from data.traces import RESERVED, DataError, load_traces, read_jsonl

DAPO_PREFIX = ("Solve the following math problem step by step. The last line of your response should be "
               "of the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n")
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'
S1K_TEACHERS = (("deepseek-r1", "deepseek"), ("gemini", "gemini"))  # (source name, column prefix)
SHORT_ANSWER = 64  # characters: a one-line solution up to this long is taken as the answer


def iter_records(path):
    """Yield (where, record) for every record of a JSONL, JSON or Parquet file; where is what
    DataError prints after the file name."""
    if str(path).endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(path, None, None, "reading .parquet needs pyarrow (pip install pyarrow)") from None
        try:
            batches = pq.ParquetFile(path).iter_batches()
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(path, None, None, f"cannot read as Parquet ({e})") from None
        i = 0
        for batch in batches:  # batch by batch: the 1.79M-row DAPO file need not sit in memory twice
            for record in batch.to_pylist():
                yield f"record {i}", record
                i += 1
    elif str(path).endswith(".json"):
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
        except OSError as e:
            raise DataError(path, None, None, f"cannot read ({e.strerror})") from None
        except UnicodeDecodeError as e:
            raise DataError(path, None, None, f"not valid UTF-8 (byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise DataError(path, None, None,
                            f"invalid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(path, None, None, 'expected a list of records or {"data": [...]}')
        yield from ((f"record {i}", record) for i, record in enumerate(data))
    else:
        yield from read_jsonl(path)


def write_jsonl(path, rows):
    """Write rows (dicts) as JSONL atomically: a temporary file in the same folder, renamed over
    path, so an interrupted run never leaves a half-written file that looks complete."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def text(record, field, path, where):
    """record[field] as a non-empty string; a list of strings (an older s1K-1.1 revision) is joined."""
    if field not in record:
        raise DataError(path, where, field, "missing")
    value = record[field]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = "\n".join(value)
    if not isinstance(value, str):
        raise DataError(path, where, field, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(path, where, field, "is empty")
    return value.strip()


def records(path):
    """iter_records, refusing anything that is not a JSON object, and an empty input."""
    n = 0
    for where, record in iter_records(path):
        if not isinstance(record, dict):
            raise DataError(path, where, None, f"expected a JSON object, got {type(record).__name__}")
        n += 1
        yield where, record
    if not n:
        raise DataError(path, None, None, "no records (the file is empty)")


def last_boxed(s):
    """The content of the last \\boxed{...} in s, braces matched; None if there is none."""
    start = s.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(s)):
        depth += {"{": 1, "}": -1}.get(s[j], 0)
        if depth == 0:
            return s[i + 1:j].strip() or None
    return None


def s1k_answer(solution):
    boxed = last_boxed(solution)
    if boxed is not None:
        return boxed
    return solution if "\n" not in solution and len(solution) <= SHORT_ANSWER else None


def convert_s1k(path, out, drop_reserved=False):
    rows, dropped, no_answer = [], 0, 0
    for i, (where, record) in enumerate(records(path)):
        question = text(record, "question", path, where)
        traces, sources = [], []
        for source, column in S1K_TEACHERS:
            fields = (f"{column}_thinking_trajectory", f"{column}_attempt")
            thinking, attempt = (text(record, field, path, where) for field in fields)
            reserved = [(field, m) for field, s in zip(fields, (thinking, attempt)) if (m := RESERVED.search(s))]
            if reserved and not drop_reserved:
                field, m = reserved[0]
                raise DataError(path, where, field, f"contains the reserved string {m.group()!r} at character "
                                                    f"{m.start()} (--drop-reserved drops such traces)")
            if reserved:
                dropped += 1
            else:
                traces.append(f"{thinking}\n</think>\n\n{attempt}")
                sources.append(source)
        if not traces:
            raise DataError(path, where, None, "every teacher's trace holds a reserved string")
        solution = record.get("solution")
        if solution is not None and not isinstance(solution, str):
            raise DataError(path, where, "solution", f"must be a string, got {type(solution).__name__}")
        answer = s1k_answer(solution.strip()) if solution and solution.strip() else None
        no_answer += answer is None
        rows.append({"id": f"s1k-{i:04d}", "question": question, "traces": traces, "answer": answer,
                     "sources": sources})
    write_jsonl(out, rows)
    print(f"s1k: {len(rows)} questions -> {out}; {no_answer} without a short answer"
          + (f"; {dropped} traces dropped for reserved strings" if drop_reserved else ""))
    return rows


def merge_traces(base, extras, out, by="id", allow_unmatched=False):
    """Append the traces (and sources) of each extra multi-trace file to the base file's questions,
    matched on `id` or on the question text with whitespace runs collapsed. An extra question with
    no match is an error (or, with allow_unmatched, dropped and counted). A trace without a source
    name is named after its file (gpt-oss-high.jsonl -> "gpt-oss-high"). The base answer is kept;
    an extra file's answer only fills a missing one."""
    def key(ex):
        return ex.id if by == "id" else " ".join(ex.question.split())

    def names(ex, file):
        return ex.sources or [os.path.splitext(os.path.basename(file))[0]] * len(ex.traces)

    merged = {}
    for ex in load_traces(base):
        if key(ex) in merged:
            raise DataError(base, None, by, f"two questions share the {by} {key(ex)!r}: cannot match on it")
        merged[key(ex)] = ex
        ex.sources = names(ex, base)
    for file in extras:
        matched, unmatched = set(), []
        for ex in load_traces(file):
            if key(ex) not in merged:
                unmatched.append(ex.id)
                continue
            target = merged[key(ex)]
            target.traces += ex.traces
            target.sources += names(ex, file)
            target.answer = target.answer or ex.answer
            matched.add(key(ex))
        if unmatched and not allow_unmatched:
            raise DataError(file, None, by, f"{len(unmatched)} questions match nothing in {base} "
                            f"(first: id {unmatched[0]!r}); --allow-unmatched drops them")
        print(f"merge: {file}: {len(matched)} questions got traces, {len(merged) - len(matched)} got none"
              + (f", {len(unmatched)} unmatched dropped" if unmatched else ""))
    write_jsonl(out, [asdict(ex) for ex in merged.values()])
    return list(merged.values())


def dapo_question(content):
    """The bare problem of a DAPO user turn: DAPO's instruction prefix and suffix cut off."""
    if content.startswith(DAPO_PREFIX):
        content = content[len(DAPO_PREFIX):]
    if content.endswith(DAPO_SUFFIX):
        content = content[:-len(DAPO_SUFFIX)]
    return content.strip()


def scalar(value, kinds=(str, int)):
    """value as a stripped string when it is one of kinds (never a bool) and not blank, else None."""
    if isinstance(value, bool) or not isinstance(value, kinds) or not str(value).strip():
        return None
    return str(value).strip()


def convert_dapo(path, out):
    rows, n = [], 0
    first, ids = {}, {}  # question -> (where, answer) of its first occurrence; id -> where
    for n, (where, record) in enumerate(records(path), start=1):
        messages = record.get("prompt")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise DataError(path, where, "prompt", "missing" if messages is None else "must be a list of messages")
        user = [m.get("content") for m in messages if m.get("role") == "user"]
        if len(user) != 1 or not isinstance(user[0], str):
            raise DataError(path, where, "prompt",
                            f"expected one user message with string content, found {len(user)}")
        question = dapo_question(user[0])
        if not question:
            raise DataError(path, where, "prompt", "the user message holds no problem after DAPO's instruction")
        reward = record.get("reward_model")
        answer = scalar(reward.get("ground_truth") if isinstance(reward, dict) else None, (str, int, float))
        if answer is None:
            raise DataError(path, where, "reward_model.ground_truth", "missing, empty or not a string or number")
        extra = record.get("extra_info")
        index = extra.get("index") if isinstance(extra, dict) else None
        if index is not None and scalar(index) is None:
            raise DataError(path, where, "extra_info.index", "must be a non-empty string or an integer")
        if question in first:
            seen_where, seen_answer = first[question]
            if seen_answer != answer:
                raise DataError(path, where, "reward_model.ground_truth",
                                f"{answer!r} but the same question at {seen_where} has {seen_answer!r}")
            continue
        row_id = f"dapo-{n - 1 if index is None else scalar(index)}"
        if row_id in ids:
            raise DataError(path, where, "extra_info.index",
                            f"id {row_id!r} already used by a different question at {ids[row_id]}")
        ids[row_id] = where
        first[question] = (where, answer)
        rows.append({"id": row_id, "question": question, "answer": answer})
    write_jsonl(out, rows)
    print(f"dapo: {n} records, {len(rows)} distinct questions ({n - len(rows)} repeats dropped) -> {out}")
    return rows


def main(argv=None):
    from data.convert_code import convert_code  # imported here: convert_code imports this module

    ap = argparse.ArgumentParser(prog="python -m data.convert", description=__doc__.split("\n\n")[0].strip())
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("s1k", help="simplescaling/s1K-1.1 -> multi-trace JSONL (DeepSeek-R1, Gemini traces)")
    p.add_argument("input", help="s1K-1.1 as .parquet, .json or .jsonl")
    p.add_argument("output", help="multi-trace .jsonl to write")
    p.add_argument("--drop-reserved", action="store_true",
                   help="drop a trace holding a tag or chat-template string instead of failing")
    p = sub.add_parser("merge", help="append more teachers' traces to a multi-trace JSONL, matched by question")
    p.add_argument("files", nargs="+", metavar="FILE", help="BASE.jsonl EXTRA.jsonl... OUT.jsonl")
    p.add_argument("--by", choices=("id", "question"), default="id",
                   help="match on the id, or on the question text with whitespace collapsed (default: id)")
    p.add_argument("--allow-unmatched", action="store_true", help="drop extra questions that match nothing")
    p = sub.add_parser("dapo", help="BytedTsinghua-SIA/DAPO-Math-17k -> math prompts (deduplicated)")
    p.add_argument("input", help="DAPO-Math-17k as .parquet, .json or .jsonl")
    p.add_argument("output", help="prompt .jsonl to write")
    p = sub.add_parser("code", help="LiveCodeBench code_generation_lite or INTELLECT-2 RL data -> code prompts")
    p.add_argument("input", help=".jsonl, .json or .parquet")
    p.add_argument("output", help="prompt .jsonl to write")
    args = ap.parse_args(argv)
    try:
        if args.command == "s1k":
            convert_s1k(args.input, args.output, args.drop_reserved)
        elif args.command == "merge":
            if len(args.files) < 3:
                ap.error("merge needs BASE.jsonl, at least one EXTRA.jsonl and OUT.jsonl")
            merge_traces(args.files[0], args.files[1:-1], args.files[-1], args.by, args.allow_unmatched)
        elif args.command == "dapo":
            convert_dapo(args.input, args.output)
        else:
            convert_code(args.input, args.output)
    except DataError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
