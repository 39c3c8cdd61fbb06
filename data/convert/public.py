"""
SSFT traces and math prompts from public data: s1K-1.1 to multi-trace JSONL, more teachers merged
in, DAPO-Math-17k to RL prompts (the package docstring says what inputs are read and how).

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
    python -m pytest -q test_convert.py
"""
import os
from dataclasses import asdict

from data.convert.io import records, scalar, text, write_jsonl
from data.traces import RESERVED, DataError, load_traces

DAPO_PREFIX = ("Solve the following math problem step by step. The last line of your response should be "
               "of the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n")
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'
S1K_TEACHERS = (("deepseek-r1", "deepseek"), ("gemini", "gemini"))  # (source name, column prefix)
SHORT_ANSWER = 64  # characters: a one-line solution up to this long is taken as the answer


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
