"""
data/: the JSONL format and its errors, the chat format and the forking tags with the real Qwen2.5
vocabulary, training sequences and their loss masks, and the synthetic task.

    python -m pytest -q test_data.py
"""
import json

import pytest

from batches import pad
from data import (DataError, encode, encode_example, forking_tags, load_traces,
                  prompt_text, sequence, tag_text)
from data import synthetic
from data.tokenizer import qwen25_tokenizer
from kernels import IGNORE_INDEX

GOOD = {"id": "q1", "question": "What is 2+2?", "traces": ["2+2=4. So 4.", "Two and two make four."],
        "answer": "4", "sources": ["a", "b"]}


def write_lines(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join(l if isinstance(l, bytes) else l.encode() for l in lines) + b"\n")
    return path


def test_load_traces_reads_the_format(tmp_path):
    second = {"question": "Q2", "traces": ["t1", "t2", "t3"], "answer": 7}
    path = write_lines(tmp_path, [json.dumps(GOOD), "", json.dumps(second)])
    a, b = load_traces(path, num_traces=2)
    assert (a.id, a.question, a.traces, a.answer, a.sources) == ("q1", "What is 2+2?", GOOD["traces"], "4", ["a", "b"])
    assert (b.id, b.traces, b.answer, b.sources) == ("line3", ["t1", "t2"], "7", None)  # first M traces


@pytest.mark.parametrize("line,where", [
    (b'{"question": "Q", "traces": ["a"]', "line 2.*invalid JSON"),
    (json.dumps({"traces": ["a"]}), "line 2.*'question': missing"),
    (json.dumps({"question": "Q"}), "line 2.*'traces': missing"),
    (json.dumps({"question": 3, "traces": ["a"]}), "line 2.*'question': must be a non-empty string"),
    (json.dumps({"question": "Q", "traces": "a"}), "line 2.*'traces': must be a non-empty list"),
    (json.dumps({"question": "Q", "traces": ["a", 5]}), r"line 2.*'traces\[1\]': must be a string"),
    (json.dumps({"question": "Q", "traces": ["a", " "]}), r"line 2.*'traces\[1\]': is empty"),
    (json.dumps({"question": "Q", "traces": []}), "line 2.*'traces': must be a non-empty list"),
    (json.dumps({"question": "Q", "traces": ["a", "b"], "sources": ["x"]}), "line 2.*'sources': has 1 names"),
    (json.dumps({"question": "Q", "traces": ["a"], "answer": [1]}), "line 2.*'answer': must be a string"),
    (json.dumps({"question": "Q", "traces": ["x <think3> y"]}), r"line 2.*'traces\[0\]'.*'<think3>'"),
    (json.dumps({"question": "Q", "traces": ["<|im_end|>"]}), r"line 2.*'traces\[0\]'.*reserved"),
    (b'{"question": "Q", "traces": ["caf\xe9"]}', "line 2.*not valid UTF-8"),
    (json.dumps(["not", "an", "object"]), "line 2.*expected a JSON object"),
    (json.dumps({**GOOD}), "line 2.*'id': duplicate id 'q1'"),
])
def test_bad_lines_name_file_line_and_field(tmp_path, line, where):
    path = write_lines(tmp_path, [json.dumps(GOOD), line])
    with pytest.raises(DataError, match=str(path).replace("/", ".") + ":" + where.replace("line ", "")):
        load_traces(path)


def test_fewer_traces_than_asked(tmp_path):
    path = write_lines(tmp_path, [json.dumps(GOOD)])
    with pytest.raises(DataError, match="data.jsonl:1: field 'traces': has 2 traces, fewer than --traces 4"):
        load_traces(path, num_traces=4)
    assert len(load_traces(path, num_traces=4, allow_fewer=True)[0].traces) == 2


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl: no examples"):
        load_traces(empty)
    with pytest.raises(DataError, match="nope.jsonl: cannot read"):
        load_traces(tmp_path / "nope.jsonl")


# -------------------------------------------------------------------------------------------------
# Chat format and tags with the real Qwen2.5 vocabulary (the released SSFT-32B's prompt format)


@pytest.fixture(scope="module")
def qwen():
    return qwen25_tokenizer()


def test_prompt_and_tag_ids_match_the_released_models(qwen):
    ids = encode(qwen, prompt_text("What is 1+1?")) + forking_tags(qwen, 6).ids[1]
    assert ids[-8:] == [151644, 77091, 198, 151644, 13708, 766, 17, 397]  # ...assistant\n<|im_start|><think2>\n
    assert ids[:3] == [151644, 8948, 198]  # <|im_start|>system\n
    assert qwen.decode(ids, skip_special_tokens=False).endswith("<|im_start|>assistant\n<|im_start|><think2>\n")


def test_forking_position_is_the_digit(qwen):
    tags = forking_tags(qwen, 6)
    assert tags.fork == 3
    assert tags.fork_ids == [16, 17, 18, 19, 20, 21]  # the digit tokens 1..6
    assert all(t[:3] == [151644, 13708, 766] and t[4] == 397 for t in tags.ids)
    with pytest.raises(ValueError, match="different lengths"):
        forking_tags(qwen, 10)  # "10" is two digit tokens


def test_sequence_loss_mask(qwen):
    ex = load_traces_from_dict({"question": "Q?", "traces": ["Because."]})
    enc = encode_example(qwen, ex)
    tag = forking_tags(qwen, 2).ids[0]
    ids, targets = sequence(enc.prompt, tag, enc.traces[0])
    full = enc.prompt + tag + enc.traces[0]
    assert ids == full[:-1] and len(targets) == len(ids)
    first = len(enc.prompt)  # the first tag token: everything after <|im_start|>assistant\n takes loss
    assert targets[:first - 1] == [IGNORE_INDEX] * (first - 1)
    assert targets[first - 1:] == full[first:]
    assert full[-1] == 151645  # the trace ends with <|im_end|>, which is learned
    _, no_tag = sequence(enc.prompt, tag, enc.traces[0], tag_loss=False)
    assert no_tag.count(IGNORE_INDEX) == first - 1 + len(tag)
    ids, targets = sequence(enc.prompt, tag, enc.traces[0], max_len=10)
    assert len(ids) == len(targets) == 10


def load_traces_from_dict(obj):
    from data.traces import _example
    return _example(obj, "mem", 1, None, False)


def test_padding_right_and_left():
    ids, real = pad([[1, 2, 3], [4]], 0, "cpu")
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and real.tolist() == [[True] * 3, [True, False, False]]
    targets, _ = pad([[2, 3, IGNORE_INDEX], [5]], IGNORE_INDEX, "cpu")  # padding takes no loss
    assert targets.tolist() == [[2, 3, IGNORE_INDEX], [5, IGNORE_INDEX, IGNORE_INDEX]]
    ids, real = pad([[1, 2, 3], [4]], 0, "cpu", left=True)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and real.tolist() == [[True] * 3, [False, False, True]]


def test_every_strategy_solves_and_is_recognised():
    for ex in synthetic.make_examples(200, seed=1):
        digits = ex.question.split()[-1]
        assert ex.answer == "".join(sorted(digits))
        assert [synthetic.classify(t) for t in ex.traces] == list(synthetic.STRATEGIES) == ex.sources
        assert all(synthetic.check(t, ex.answer) for t in ex.traces)
        assert len(set(ex.traces)) == 4


def test_strategy_texts():
    assert synthetic.solve("72924", "smallest") == "smallest 2|7924 2|794 4|79 7|9 9| answer 22479"
    assert synthetic.solve("72924", "largest") == "largest 9|7224 7|224 4|22 2|2 2| answer 22479"
    assert synthetic.solve("72924", "count") == "count 2x2 4x1 7x1 9x1 answer 22479"
    assert synthetic.solve("72924", "insert") == "insert 7 27 279 2279 22479 answer 22479"
    assert synthetic.classify("insert 3 answer 3") == "insert"
    assert synthetic.classify("sorting 3") is None and synthetic.classify("") is None
    assert synthetic.extract_answer("count 1x2 answer 11 answer 12") == "12"
    assert not synthetic.check("count 1x2", "11")


def test_synthetic_examples_are_distinct_and_seeded():
    a, b = synthetic.make_examples(300, seed=0), synthetic.make_examples(300, seed=0)
    assert a == b and len({e.question for e in a}) == 300
    assert a != synthetic.make_examples(300, seed=1)


def test_synthetic_tokenizer_forks_on_a_digit():
    examples = synthetic.make_examples(100, seed=0)
    tok = synthetic.tokenizer_for(examples)
    tags = forking_tags(tok, 6)
    assert [tok.decode([i]) for i in tags.fork_ids] == ["1", "2", "3", "4", "5", "6"]
    text = prompt_text(examples[0].question, synthetic.SYSTEM) + tag_text(2) + examples[0].traces[2]
    assert tok.decode(encode(tok, text), skip_special_tokens=False) == text
